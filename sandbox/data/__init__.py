"""Seeded synthetic DreamApply data: name tables, the catalogue, the generator and time-advance mutations."""
