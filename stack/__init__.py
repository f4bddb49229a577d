"""The local stack: broker, database, stub models, Faust workers, API and dashboard on loopback, plus the demo."""
