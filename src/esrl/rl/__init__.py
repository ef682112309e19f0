"""Parallel RL: A3C, parallel DQN, parallel Dyna-Q. Maths and worker loops, no processes inside."""
