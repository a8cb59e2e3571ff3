"""Examples of the toolkit in use."""
