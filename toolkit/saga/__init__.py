"""Choreographed sagas: definitions, messages, participants and the state fold."""
