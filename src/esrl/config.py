"""Dataclass configs, documented field by field, and their validation: the schema.

The command line (`esrl.config_cli`) and config files (`esrl.config_files`) derive from it; this
module re-exports both, so `esrl.config` is the one import.

Each field carries its help text (and, where it has a closed set, its choices) in `metadata`,
so the parser, `--help` and the validation messages never repeat a field's description.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

# the command line and file loading live beside the schema; re-exported so `esrl.config` stays the one import
from esrl.config_cli import add_arguments as add_arguments
from esrl.config_files import build as build
from esrl.config_files import load_file as load_file
from esrl.config_files import load_run as load_run
from esrl.config_files import split_settings as split_settings
from esrl.errors import InputError


def _f(default: Any, help: str, choices: tuple[str, ...] | None = None) -> Any:
    return field(default=default, metadata={"help": help, "choices": choices})


@dataclass
class RunConfig:
    """Where and how long a training run goes, and how it is measured."""

    env: str = _f("CartPole-v1", "Gymnasium environment id")
    seed: int = _f(0, "run seed; every random stream derives from it")
    backend: str = _f("processes", "where the work runs (vectorized: ES only; simulated: N logical workers on a "
                      "virtual clock, every time in virtual seconds, budgets included; its RL sync auto is "
                      "param-server)",
                      ("serial", "processes", "vectorized", "ray", "simulated"))
    address: str = _f("", "ray: cluster to join ('auto': Ray's discovery; host:port: must answer within 10 s); "
                      "empty starts a local instance listening on 127.0.0.1 only")
    device: str = _f("auto", "torch device of the vectorized backend, and of A3C's and DQN's device arrangements "
                     "(chosen with --sync ga3c / device; cuda with another sync is refused)", ("cpu", "cuda", "auto"))
    workers: int = _f(0, "workers (0 = one per CPU core; on Ray, one per CPU of the cluster)")
    target_return: float | None = _f(None, "evaluation return that counts as solved (default: the env's reward_threshold)")
    max_seconds: float = _f(600.0, "wall-clock budget in seconds (0 = none)")
    max_iterations: int = _f(0, "iteration budget (0 = none)")
    max_env_steps: int = _f(0, "env-step budget (0 = none)")
    eval_episodes: int = _f(10, "noiseless evaluation episodes per evaluation (mean over them vs the target)")
    eval_every_steps: int = _f(10_000, "evaluate the current policy every this many training env steps, training "
                               "paused (the same schedule for every algorithm and worker count)")
    confirm_episodes: int = _f(100, "fresh episodes that confirm an evaluation at or above the target, at once and "
                               "off the clock; the run is solved at the first confirmed one (0: the first hit solves)")
    checkpoint_every: int = _f(10, "write a checkpoint every this many iterations (and at the end)")
    verify_every: int = _f(10, "compare worker replicas' parameter hashes every this many iterations")
    stop_on_solve: bool = _f(True, "stop at the solve: the first evaluation at or above the target whose "
                             "confirmation holds")
    run_dir: str = _f("", "run directory (default: runs/<algo>-<env>-s<seed>)")
    max_episode_steps: int = _f(0, "cap every training and evaluation episode at this many steps (0 = the env's limit)")
    episodic_life: bool = _f(False, "Atari: a lost life ends the training episode (evaluation plays whole games)")
    preset: str = _f("auto", "tuned settings from the zoo (configs/zoo/): auto (ALGO/ENV.toml and the env's measurement "
                     "settings in envs.toml, when they exist and no --config is given), none, or a preset file; "
                     "config.json records which file was used")
    tensorboard: bool = _f(True, "also write each metrics line as TensorBoard scalars under RUN/tb/ (step: env steps)")
    # --- the simulated backend (docs/architecture.md, "The simulated cluster"); refused with any other backend
    bandwidth_gbit: float = _f(10.0, "simulated: bandwidth of every node's link to the hub, each direction, Gbit/s")
    latency_us: float = _f(50.0, "simulated: one-way latency of every message, microseconds")
    broadcast: str = _f("tree", "simulated ES: how the per-iteration broadcast reaches the workers (hub: the "
                        "coordinator sends every copy; tree: workers relay it, --fanout children each)",
                        ("hub", "tree"))
    fanout: int = _f(4, "simulated ES: children of each node of the broadcast tree")
    worker_speed: float = _f(1.0, "simulated: compute speed of every worker relative to this machine (2: twice as fast)")
    straggler_prob: float = _f(0.0, "simulated: chance that a task or update straggles (seeded per worker)")
    straggler_slowdown: float = _f(4.0, "simulated: a straggling task or update takes this many times as long")
    failure_prob: float = _f(0.0, "simulated: chance that a worker dies during a task or update (seeded per worker); "
                             "its work is lost and a replacement starts after --restart-s")
    restart_s: float = _f(1.0, "simulated: virtual seconds before a dead worker's replacement starts")
    sim_costs: str = _f("", "simulated: a JSON file of fixed costs (a run's config.json or its resolved.cost_model) "
                        "used instead of calibrating on this machine, so a run repeats bit for bit anywhere")

    def env_spec(self) -> Any:
        """The EnvSpec of this run's env: its options, and the episode cap when one is set."""
        from esrl import envs

        spec = envs.spec_of(self.env, **self.env_options())
        if self.max_episode_steps and self.max_episode_steps < spec.max_episode_steps:
            spec = dataclasses.replace(spec, max_episode_steps=self.max_episode_steps)
        return spec

    def env_options(self) -> dict[str, Any]:
        """Options of the training env (`envs.make`)."""
        return {"episodic_life": self.episodic_life}

    def budget_spent(self, iterations: int, elapsed_s: float, env_steps: int) -> bool:
        """True once any budget that is set (non-zero) is used up."""
        return bool((self.max_iterations and iterations >= self.max_iterations)
                    or (self.max_seconds and elapsed_s >= self.max_seconds)
                    or (self.max_env_steps and env_steps >= self.max_env_steps))

    def validate(self) -> None:
        _check(self.backend in ("serial", "processes", "vectorized", "ray", "simulated"), "backend",
               f"unknown backend {self.backend!r}", "serial, processes, vectorized, ray, simulated")
        _check(self.device in ("cpu", "cuda", "auto"), "device", f"unknown device {self.device!r}", "cpu, cuda, auto")
        if self.device == "cuda":
            import torch

            _check(torch.cuda.is_available(), "device", "cuda was asked for but no CUDA device is available",
                   "cpu, auto")
        _check(self.seed >= 0, "seed", f"must be >= 0, got {self.seed}")
        _check(self.workers >= 0, "workers", f"must be >= 0, got {self.workers}", "0 (all cores) or a positive count")
        _check(self.max_seconds >= 0, "max_seconds", f"must be >= 0, got {self.max_seconds}")
        _check(self.max_iterations >= 0, "max_iterations", f"must be >= 0, got {self.max_iterations}")
        _check(self.max_env_steps >= 0, "max_env_steps", f"must be >= 0, got {self.max_env_steps}")
        _check(self.max_episode_steps >= 0, "max_episode_steps", f"must be >= 0, got {self.max_episode_steps}")
        _check(self.eval_episodes >= 1, "eval_episodes", f"must be >= 1, got {self.eval_episodes}")
        _check(self.confirm_episodes >= 0, "confirm_episodes", f"must be >= 0, got {self.confirm_episodes}")
        for name in ("eval_every_steps", "checkpoint_every", "verify_every"):
            _check(getattr(self, name) >= 1, name, f"must be >= 1, got {getattr(self, name)}")
        self._validate_simulated()

    def _validate_simulated(self) -> None:
        if self.backend != "simulated":  # a network or worker option elsewhere would silently do nothing
            for name in SIMULATED_FIELDS:
                _check(getattr(self, name) == _DEFAULTS[name], name, "applies to the simulated backend only",
                       "--backend simulated, or leave it unset")
            return
        _check(1 <= self.workers <= MAX_SIMULATED_WORKERS or self.workers == 0, "workers",
               f"must be in [1, {MAX_SIMULATED_WORKERS}] on the simulated backend, got {self.workers}")
        _check(self.bandwidth_gbit > 0, "bandwidth_gbit", f"must be > 0, got {self.bandwidth_gbit}")
        _check(self.latency_us >= 0, "latency_us", f"must be >= 0, got {self.latency_us}")
        _check(self.broadcast in ("hub", "tree"), "broadcast", f"unknown {self.broadcast!r}", "hub, tree")
        _check(self.fanout >= 1, "fanout", f"must be >= 1, got {self.fanout}")
        _check(self.worker_speed > 0, "worker_speed", f"must be > 0, got {self.worker_speed}")
        _check(0 <= self.straggler_prob <= 1, "straggler_prob", f"must be in [0, 1], got {self.straggler_prob}")
        _check(self.straggler_slowdown >= 1, "straggler_slowdown", f"must be >= 1, got {self.straggler_slowdown}")
        _check(0 <= self.failure_prob <= 0.5, "failure_prob", f"must be in [0, 0.5], got {self.failure_prob}")
        _check(self.restart_s >= 0, "restart_s", f"must be >= 0, got {self.restart_s}")


SIMULATED_FIELDS = ("bandwidth_gbit", "latency_us", "broadcast", "fanout", "worker_speed", "straggler_prob",
                    "straggler_slowdown", "failure_prob", "restart_s", "sim_costs")
MAX_SIMULATED_WORKERS = 4096
_DEFAULTS = {f.name: f.default for f in dataclasses.fields(RunConfig)}


@dataclass
class ESConfig:
    """OpenAI-ES hyperparameters (Salimans et al. 2017)."""

    population: int = _f(48, "perturbations per iteration (even when mirrored)")
    sigma: float = _f(0.1, "noise standard deviation")
    mirrored: bool = _f(True, "evaluate +eps and -eps as a pair")
    shaping: str = _f("centered_rank", "fitness shaping", ("centered_rank", "raw", "sign"))
    optimizer: str = _f("adam", "optimizer on the flat parameter vector", ("adam", "sgd"))
    lr: float = _f(0.05, "optimizer step size")
    momentum: float = _f(0.9, "SGD momentum")
    beta1: float = _f(0.9, "Adam beta1")
    beta2: float = _f(0.999, "Adam beta2")
    l2: float = _f(0.0005, "L2 weight decay, in the paper's meaning (the OpenAI starter's l2coeff): subtracted "
                   "as l2 * theta from the mean of shaped-return-weighted noise before the division by sigma")
    hidden: tuple[int, ...] = _f((16,), "hidden layer sizes, comma-separated (empty: linear)")
    policy: str = _f("auto", "policy network: an MLP, or the paper's CNN for image frames (auto: cnn for images)",
                     ("auto", "mlp", "cnn"))
    vbn_batch: int = _f(128, "cnn: frames in the virtual-batch-norm reference batch (0 = no normalization)")
    cnn_dtype: str = _f("float32", "cnn: number type while acting (bfloat16 is faster on CPUs with AMX)",
                        ("float32", "bfloat16"))
    obs_norm: bool = _f(True, "normalize observations with running statistics")
    obs_norm_fraction: float = _f(0.05, "fraction of rollouts whose observations update the statistics")
    obs_clip: float = _f(5.0, "clip normalized observations to +-this")
    adaptive_cap: bool = _f(False, "cap episodes at 2 x the previous iteration's mean length")
    action_noise: float = _f(0.0, "std of Gaussian noise added to policy outputs during training")
    common_seeds: str = _f("none", "episodes of one iteration that start from the same env reset seed (common random "
                           "numbers): none, each mirrored pair, or the whole population", ("none", "pair", "population"))
    noise_table_size: int = _f(0, "noise table entries (0 = max(4M, 64 x parameters))")
    chunk: int = _f(0, "members per task sent to a worker (0 = automatic)")

    def validate(self) -> None:
        _check(self.sigma > 0, "sigma", f"must be > 0, got {self.sigma}", "a positive float such as 0.02")
        _check(self.population >= 2, "population", f"must be >= 2, got {self.population}")
        if self.mirrored:
            _check(self.population % 2 == 0, "population", f"must be even with mirrored sampling, got {self.population}",
                   "an even count, or --no-mirrored")
        _check(self.shaping in ("centered_rank", "raw", "sign"), "shaping", f"unknown {self.shaping!r}",
               "centered_rank, raw, sign")
        _check(self.optimizer in ("adam", "sgd"), "optimizer", f"unknown {self.optimizer!r}", "adam, sgd")
        _check(self.lr > 0, "lr", f"must be > 0, got {self.lr}")
        _check(0 <= self.momentum < 1, "momentum", f"must be in [0, 1), got {self.momentum}")
        _check(0 <= self.beta1 < 1 and 0 <= self.beta2 < 1, "beta1/beta2", "must be in [0, 1)")
        _check(self.l2 >= 0, "l2", f"must be >= 0, got {self.l2}")
        _check(all(h > 0 for h in self.hidden), "hidden", f"sizes must be positive, got {self.hidden}")
        _check(self.policy in ("auto", "mlp", "cnn"), "policy", f"unknown {self.policy!r}", "auto, mlp, cnn")
        _check(self.cnn_dtype in ("float32", "bfloat16"), "cnn_dtype", f"unknown {self.cnn_dtype!r}",
               "float32, bfloat16")
        _check(self.vbn_batch == 0 or 2 <= self.vbn_batch <= 4096, "vbn_batch", f"must be 0 or in [2, 4096], got {self.vbn_batch}")
        _check(0 <= self.obs_norm_fraction <= 1, "obs_norm_fraction", f"must be in [0, 1], got {self.obs_norm_fraction}")
        _check(self.obs_clip > 0, "obs_clip", f"must be > 0, got {self.obs_clip}")
        _check(self.action_noise >= 0, "action_noise", f"must be >= 0, got {self.action_noise}")
        _check(self.common_seeds in ("none", "pair", "population"), "common_seeds", f"unknown {self.common_seeds!r}",
               "none, pair, population")
        if self.common_seeds == "pair":
            _check(self.mirrored, "common_seeds", "pair needs mirrored sampling", "none or population, or --mirrored")
        _check(self.noise_table_size >= 0, "noise_table_size", f"must be >= 0, got {self.noise_table_size}")
        _check(self.chunk >= 0, "chunk", f"must be >= 0, got {self.chunk}")


OBS_NORM_HELP = ("normalize observations with running statistics, each worker its own (auto: on for MuJoCo's "
                 "Box observations, off for Dyna-Q and the ga3c/device arrangements, which have none yet)")
CLIP_REWARDS_HELP = ("clip training rewards to [-1, 1] (auto: on for Atari, as the DQN and A3C papers did); "
                     "returns and evaluation are never clipped")
REWARD_NORM_HELP = ("scale training rewards by the running standard deviation of each env's discounted return, "
                    "clipped to [-10, 10] (Stable-Baselines3's VecNormalize, the RL Zoo's `normalize`); each worker "
                    "its own statistics, restarted on resume; returns and evaluation are never scaled")


@dataclass
class A3CConfig:
    """A3C (Mnih et al. 2016): asynchronous actor-critic workers updating a global model."""

    sync: str = _f("auto", "how workers share the global model (auto: hogwild on processes and serial, "
                   "param-server on ray; ga3c: the model on --device, CPU actors)",
                   ("auto", "hogwild", "lock", "param-server", "ga3c"))
    shards: int = _f(1, "parameter-server shards (param-server only)")
    optimizer: str = _f("adam", "shared optimizer", ("adam", "rmsprop", "sgd"))
    lr: float = _f(1e-3, "learning rate")
    gamma: float = _f(0.99, "discount")
    n_steps: int = _f(5, "env steps per update (t_max)")
    gae_lambda: float = _f(1.0, "GAE lambda (1.0: plain n-step returns)")
    entropy_coef: float = _f(0.01, "entropy bonus coefficient")
    value_coef: float = _f(0.5, "value-loss coefficient")
    max_grad_norm: float = _f(0.5, "clip the gradient to this L2 norm (0 = no clipping)")
    hidden: tuple[int, ...] = _f((64, 64), "hidden layer sizes")
    shared_trunk: bool = _f(False, "policy and value share hidden layers")
    envs_per_worker: int = _f(4, "envs each worker steps together (one batched forward)")
    report_every: int = _f(100, "global updates per metrics line (one 'iteration')")
    obs_norm: str = _f("auto", OBS_NORM_HELP, ("auto", "on", "off"))
    clip_rewards: str = _f("auto", CLIP_REWARDS_HELP, ("auto", "on", "off"))
    reward_norm: str = _f("off", REWARD_NORM_HELP, ("on", "off"))
    log_std_init: float = _f(-0.5, "initial log standard deviation of continuous actions")
    use_sde: bool = _f(False, "generalized state-dependent exploration (gSDE, Raffin et al. 2022) for continuous "
                       "actions: noise = policy features x a Gaussian matrix held for sde_sample_freq steps")
    sde_sample_freq: int = _f(-1, "env steps between gSDE noise matrices (-1: one per rollout)")

    def validate(self) -> None:
        _validate_rl(self, "ga3c")
        _check(self.reward_norm in ("on", "off"), "reward_norm", f"unknown {self.reward_norm!r}", "on, off")
        _check(self.sde_sample_freq == -1 or self.sde_sample_freq >= 1, "sde_sample_freq",
               f"must be -1 or >= 1, got {self.sde_sample_freq}")
        _check(not (self.use_sde and self.sync == "ga3c"), "use_sde",
               "GA3C's predictor samples Gaussian actions only", "--no-use-sde, or another sync")
        _check(0 <= self.gae_lambda <= 1, "gae_lambda", f"must be in [0, 1], got {self.gae_lambda}")
        _check(self.entropy_coef >= 0, "entropy_coef", f"must be >= 0, got {self.entropy_coef}")
        _check(self.value_coef >= 0, "value_coef", f"must be >= 0, got {self.value_coef}")


@dataclass
class DQNConfig:
    """Parallel DQN (Gorila, Nair et al. 2015): actor-learner workers updating a global Q-network."""

    sync: str = _f("auto", "how workers share the global Q-network (auto: hogwild on processes and serial, "
                   "param-server on ray; device: learner and replay on --device)",
                   ("auto", "hogwild", "lock", "param-server", "device"))
    shards: int = _f(1, "parameter-server shards (param-server only)")
    replay: str = _f("local", "replay memory per worker or one shared by all", ("local", "global"))
    optimizer: str = _f("adam", "shared optimizer", ("adam", "rmsprop", "sgd"))
    lr: float = _f(5e-4, "learning rate")
    gamma: float = _f(0.99, "discount")
    n_steps: int = _f(1, "env steps per update (per worker)")
    batch_size: int = _f(64, "transitions per gradient")
    buffer_size: int = _f(50_000, "replay capacity (per worker when local)")
    learning_starts: int = _f(1_000, "transitions in replay before the first update")
    target_update: int = _f(100, "global updates between target-network refreshes")
    double: bool = _f(True, "double DQN targets (van Hasselt et al. 2016)")
    eps_start: float = _f(1.0, "initial exploration epsilon")
    eps_final: float = _f(0.05, "final epsilon of worker 0; worker i ends at eps_final^(1 + i/(N-1))")
    eps_decay_steps: int = _f(5_000, "env steps (per worker) of linear epsilon decay")
    max_grad_norm: float = _f(10.0, "clip the gradient to this L2 norm (0 = no clipping)")
    hidden: tuple[int, ...] = _f((128, 128), "hidden layer sizes")
    envs_per_worker: int = _f(1, "envs each worker steps together")
    report_every: int = _f(500, "global updates per metrics line (one 'iteration')")
    obs_norm: str = _f("auto", OBS_NORM_HELP, ("auto", "on", "off"))
    clip_rewards: str = _f("auto", CLIP_REWARDS_HELP, ("auto", "on", "off"))

    def validate(self) -> None:
        _validate_dqn(self)


@dataclass
class DynaQConfig(DQNConfig):
    """Parallel deep Dyna-Q: one real-environment actor, planners learning from a shared world model.

    Worker 0 acts (with DQN's settings and epsilon schedule); workers 1..N-1 plan.
    """

    replay: str = _f("global", "real transitions are shared with the planners", ("global",))
    model_hidden: tuple[int, ...] = _f((128, 128), "world-model hidden layer sizes")
    model_lr: float = _f(1e-3, "world-model learning rate")
    planning_ratio: float = _f(1.0, "simulated transitions per real transition (0 = no planning)")
    planning_actions: str = _f("epsilon-greedy", "actions of imagined transitions: the current Q's epsilon-greedy "
                               "ones at the actor's epsilon (what the world model was trained on), or uniform",
                               ("epsilon-greedy", "uniform"))

    def validate(self) -> None:
        _validate_dqn(self)
        _check(self.replay == "global", "replay", f"Dyna-Q's planners need the shared replay, got {self.replay!r}",
               "global")
        _check(self.planning_ratio >= 0, "planning_ratio", f"must be >= 0, got {self.planning_ratio}")
        _check(self.planning_actions in ("epsilon-greedy", "uniform"), "planning_actions",
               f"unknown {self.planning_actions!r}", "epsilon-greedy, uniform")
        _check(self.model_lr > 0, "model_lr", f"must be > 0, got {self.model_lr}")
        _check(all(h > 0 for h in self.model_hidden), "model_hidden", f"sizes must be positive, got {self.model_hidden}")


def _validate_dqn(cfg: Any) -> None:
    _validate_rl(cfg, "" if isinstance(cfg, DynaQConfig) else "device")  # Dyna-Q has no device arrangement
    _check(cfg.replay in ("local", "global"), "replay", f"unknown {cfg.replay!r}", "local, global")
    _check(cfg.batch_size >= 1, "batch_size", f"must be >= 1, got {cfg.batch_size}")
    _check(cfg.buffer_size >= cfg.batch_size, "buffer_size", f"must be >= batch_size, got {cfg.buffer_size}")
    _check(cfg.learning_starts >= cfg.batch_size, "learning_starts", f"must be >= batch_size ({cfg.batch_size})")
    _check(cfg.learning_starts <= cfg.buffer_size, "learning_starts", f"must be <= buffer_size ({cfg.buffer_size})")
    _check(cfg.target_update >= 1, "target_update", f"must be >= 1, got {cfg.target_update}")
    _check(0 <= cfg.eps_final <= cfg.eps_start <= 1, "eps_start/eps_final", "need 0 <= eps_final <= eps_start <= 1")
    _check(cfg.eps_decay_steps >= 1, "eps_decay_steps", f"must be >= 1, got {cfg.eps_decay_steps}")


def _validate_rl(cfg: Any, device_sync: str = "") -> None:
    syncs = ("auto", "hogwild", "lock", "param-server", *((device_sync,) if device_sync else ()))
    _check(cfg.sync in syncs, "sync", f"unknown {cfg.sync!r}", ", ".join(syncs))
    for name in ("obs_norm", "clip_rewards"):
        _check(getattr(cfg, name) in ("auto", "on", "off"), name, f"unknown {getattr(cfg, name)!r}", "auto, on, off")
    _check(cfg.shards >= 1, "shards", f"must be >= 1, got {cfg.shards}")
    _check(cfg.optimizer in ("adam", "rmsprop", "sgd"), "optimizer", f"unknown {cfg.optimizer!r}",
           "adam, rmsprop, sgd")
    _check(cfg.lr > 0, "lr", f"must be > 0, got {cfg.lr}")
    _check(0 < cfg.gamma <= 1, "gamma", f"must be in (0, 1], got {cfg.gamma}")
    _check(cfg.n_steps >= 1, "n_steps", f"must be >= 1, got {cfg.n_steps}")
    _check(cfg.max_grad_norm >= 0, "max_grad_norm", f"must be >= 0, got {cfg.max_grad_norm}")
    _check(all(h > 0 for h in cfg.hidden), "hidden", f"sizes must be positive, got {cfg.hidden}")
    _check(cfg.envs_per_worker >= 1, "envs_per_worker", f"must be >= 1, got {cfg.envs_per_worker}")
    _check(cfg.report_every >= 1, "report_every", f"must be >= 1, got {cfg.report_every}")


ALGORITHMS: dict[str, type] = {"es": ESConfig, "a3c": A3CConfig, "dqn": DQNConfig, "dynaq": DynaQConfig}


def _check(ok: bool, name: str, problem: str, accepted: str | None = None) -> None:
    if not ok:
        raise InputError(name, problem, accepted)


def to_dict(cfg: Any) -> dict[str, Any]:
    """JSON-ready dict of a config dataclass (tuples become lists)."""
    return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(cfg).items()}


DEVICE_SYNC = {"a3c": "ga3c", "dqn": "device"}  # each algorithm's device arrangement, chosen by its name only


def resolve_sync(backend: str, sync: str) -> str:
    """`auto`: hogwild where the workers share one machine's memory (processes, serial), param-server on Ray and
    on the simulated cluster."""
    if sync != "auto":
        return sync
    return "param-server" if backend in ("ray", "simulated") else "hogwild"


def resolve_rl(algo: str, run: RunConfig, cfg: Any, spec: Any = None) -> Any:
    """The RL config with its `auto` settings decided for this run, as config.json records them: sync from the
    backend; with the EnvSpec, obs_norm (MuJoCo's Box observations) and clip_rewards (Atari) from the env."""
    sync = resolve_sync(run.backend, cfg.sync)
    changes: dict[str, Any] = {"sync": sync}
    if spec is not None:
        from esrl import envs

        if cfg.obs_norm == "auto":  # Dyna-Q's planners and the device arrangements have no normalizer yet
            on = (algo != "dynaq" and sync not in DEVICE_SYNC.values() and not spec.image
                  and envs.is_mujoco(spec.env_id))
            changes["obs_norm"] = "on" if on else "off"
        if cfg.clip_rewards == "auto":
            changes["clip_rewards"] = "on" if envs.is_atari(spec.env_id) else "off"
    return dataclasses.replace(cfg, **changes)


def check_combination(algo: str, run: RunConfig, cfg: Any, obs_onehot: bool = False, spec: Any = None) -> None:
    """Refuse algorithm x backend x env combinations that cannot run, before anything starts (`spec`: the EnvSpec)."""
    # a lost life continues the game in the next episode: ES episodes would depend on their order
    _check(not (algo == "es" and run.episodic_life), "episodic_life",
           "ES episodes are whole games (each a function of its seed alone)", "--no-episodic-life")
    if spec is not None:
        from esrl import envs

        _check(not (algo == "dynaq" and spec.image), "env",
               f"Dyna-Q's world model predicts flat observations, not the frames of {run.env}",
               "an env with flat Box observations")
        _check(not (algo == "es" and run.backend == "vectorized" and envs.is_atari(run.env)), "backend",
               f"the vectorized backend does not run Atari envs ({run.env}): ale-py's own vector env preprocesses "
               "differently", "processes, serial, ray")
    if algo != "es":
        _check(run.backend in ("serial", "processes", "ray", "simulated"), "backend",
               f"{algo} has no {run.backend} backend yet", "serial, processes, ray, simulated")
        sync = resolve_sync(run.backend, cfg.sync)
        _check(run.backend != "simulated" or sync not in DEVICE_SYNC.values(), "sync",
               f"the simulated backend runs CPU workers, not the {sync} arrangement", "hogwild, lock, param-server")
        # shared memory does not span nodes: on Ray the parameters live in parameter-server actors
        _check(run.backend != "ray" or sync == "param-server", "sync",
               f"{sync} keeps the model on one machine; the ray backend needs param-server", "param-server")
        # an arrangement is chosen by its name only: --device cuda never turns one into another. Checked here,
        # before RunConfig.validate looks for a GPU, so a conflict is refused the same way on any machine
        device_sync = DEVICE_SYNC.get(algo)
        if run.device == "cuda":
            _check(device_sync is not None, "device", f"{algo} has no device arrangement", "cpu, auto")
            _check(sync == device_sync, "device",
                   f"cuda serves only the {device_sync} arrangement, and sync is {sync} (CPU workers)",
                   f"cpu or auto with sync {sync}; or --sync {device_sync}")
        if cfg.obs_norm == "on":
            _check(algo != "dynaq", "obs_norm", "Dyna-Q's planners learn from imagined states no statistics cover",
                   "off")
            _check(sync not in DEVICE_SYNC.values(), "obs_norm",
                   f"the {sync} arrangement does not normalize observations yet", "off")
            _check(spec is None or not spec.image, "obs_norm", f"the frames of {run.env} are scaled by the CNN",
                   "off")
        _check(not obs_onehot, "env", f"{run.env} has Discrete observations; the RL networks take Box ones",
               "an env with a Box observation space")
        _check(not (getattr(cfg, "use_sde", False) and spec is not None and spec.discrete), "use_sde",
               f"gSDE perturbs continuous actions, and {run.env}'s are discrete", "--no-use-sde")
    elif run.backend == "vectorized":  # envs without a torch version step in Gymnasium, policies stay batched
        _check(cfg.action_noise == 0, "action_noise", "the vectorized backend does not add action noise yet", "0")
        _check(cfg.common_seeds == "none", "common_seeds",
               "the vectorized backend draws its start states per batch, not per member, yet", "none")
