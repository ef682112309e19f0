"""OpenAI-ES (Salimans et al. 2017): pure maths, no processes, sockets or devices."""
