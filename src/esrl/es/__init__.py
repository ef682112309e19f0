"""OpenAI-ES (Salimans et al. 2017): the maths, the policies it perturbs and the batched envs it evaluates them in;
no processes or sockets."""
