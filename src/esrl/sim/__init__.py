"""The virtual-time cluster behind `--backend simulated` (docs/architecture.md, "The simulated cluster").

Real learning, virtual time: every logical worker's work is really computed, in this process,
at the moment a SimPy schedule says it happens; how long it takes comes from a cost model
measured once on this machine (`costs`), never from the wall clock, so a run repeats bit for
bit. `network` models the hub, its links and the broadcast tree (`framing`: what TCP puts on a
link); `clock` turns the training loops' measurement protocol into virtual seconds; `faults`
draws seeded stragglers and failures.
The simulated backend (`backends/simulated.py`: replicas and free-running workers, the latter
with the store `stores/simulated.py`) builds on these and knows no algorithm.
"""
