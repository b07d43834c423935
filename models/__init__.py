"""The ppgen catalogue: one module per model family, each model a program plus a seeded
``simulate`` helper with the true values."""
