"""One module per agent. Each ``register(app, context)`` adds its agent(s) to a Faust app."""
