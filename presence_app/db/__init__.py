"""The relational database: engine, models, write outcomes and migrations."""
