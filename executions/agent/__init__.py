"""The agent run: the loop, the LLM client, the tools and the peer-service clients."""
