"""Small utilities shared by the engine: distributed helpers, logging, seeding, atomic writes."""
