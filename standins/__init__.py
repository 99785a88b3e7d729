"""Stand-ins for the peer services (AMS, CS, ES, QS) and the LLM, for local runs and tests."""
