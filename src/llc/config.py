"""The configuration of one LLC run: a validated, immutable value with presets and stable ids."""

from __future__ import annotations

import difflib
import hashlib
import json
import math
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from llc.errors import ConfigError, describe, merge_union_branches
from llc.fingerprint import code_fingerprint
from llc.samplers.registry import MINIBATCH_SAMPLERS, SAMPLERS, STREAM, Sampling

Problem = Literal["mlp", "linear", "rrr", "dln", "module"]
# The samplers and what each takes come from their registry (samplers/registry.py).
Sampler = Literal[tuple(SAMPLERS)]  # type: ignore[valid-type]

# Keys that decide the data and the ERM point w*: runs that agree on them share a family.
FAMILY_KEYS = (
    "problem", "seed", "n_data", "in_dim", "out_dim", "widths", "depth", "target_params", "activation",
    "bias", "teacher_widths", "x_dist", "noise", "noise_scale", "loss", "true_rank", "erm_steps", "erm_lr",
    "dtype", "model", "data",
)  # fmt: skip

# Keys that change how fast a run goes, never what it computes; and `weights`, the path of a file whose
# content hash the ids take instead (module_fingerprint), so that moving the file keeps its results.
EXECUTION_ONLY = ("threads", "devices")
NOT_IN_IDS = (*EXECUTION_ONLY, "weights")

# SGHMC's friction when none is given (friction=auto starts from it).
DEFAULT_FRICTION = 0.1
# Your own model's sgld and sghmc step on all the points, up to this many held in memory, when no
# batch_size is given (problems/module.py: minibatch_size).
FULL_BATCH_N = 1024


# The problems whose λ is known estimate it by default: localization weak against nβ (γ ≪ 2·nβ, the
# squared loss's curvature; gamma 100 read 10-35% low on them), and, for sgld and sghmc with a warm-up,
# step_size=auto, since a fixed step right for one network's curvature diverges on another's.
KNOWN_LAMBDA_PROBLEMS = ("linear", "rrr", "dln")
KNOWN_LAMBDA_DEFAULTS = {"gamma": 1.0}

# step_size=auto measures the curvature over 10 rounds of warm-up (samplers/step_search.py): 4 steps each.
AUTO_MIN_WARMUP = 40

# Your own model (problem module, llc.estimate) gets the known-λ problems' defaults where its λ is unknown:
# a warm-up of a fifth of the steps and at least MODULE_MIN_WARMUP (step_size=auto's search, HMC's and
# MCLMC's tuning), step_size=auto for sgld and sghmc, and gamma=auto, decided from w* when the run starts
# (run/localization.py): weak at a minimum, strong where w* is not one (a checkpoint mid-training).
MODULE_MIN_WARMUP = 200
MODULE_WARMUP_FRACTION = 0.2
# steps=auto (the default of your own model and of the known-λ problems, with MODULE_MIN_WARMUP of warm-up;
# any run's on request): sample AUTO_INITIAL_STEPS, then
# double the same chains while they have not filled, up to AUTO_STEP_BUDGET times that (run/chain_length.py).
AUTO_INITIAL_STEPS = 1000
AUTO_STEP_BUDGET = 8

# Losses of the built-in problems; a module problem takes mse, cross_entropy or "package.module:function".
BUILTIN_LOSSES = ("mse", "t_regression")
MODULE_LOSSES = ("mse", "cross_entropy")
# Validation context under which a module problem may leave `model` and `data` unset: `llc.estimate`,
# whose model and data are Python objects (their fingerprint then comes with the config).
IN_MEMORY_MODULE = "in_memory_module"
# Half-precision dtypes: the model computes in them under autocast, the chain state stays float32.
HALF_DTYPES = ("bfloat16", "float16")


class RunConfig(BaseModel):
    """Everything that decides an LLC run's result. Unknown keys are errors."""

    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True)

    # -- problem ------------------------------------------------------------------------
    problem: Problem = Field(
        "mlp",
        description="mlp (teacher-student), an analytic target (linear, rrr, dln), or module (your model)",
    )
    model: str | None = Field(
        None, description="module: package.module:factory returning the torch.nn.Module (its weights are w*)"
    )
    data: str | None = Field(
        None, description="module: package.module:factory returning a Dataset of (x, y) or an (x, y) pair"
    )
    weights: str | None = Field(
        None, description="module: a state_dict file loaded into the model (default: the factory's weights)"
    )
    seed: int = Field(0, ge=0, description="seeds data, teacher, ERM and sampling")
    n_data: int = Field(5000, ge=2, description="number of training points n")
    in_dim: int = Field(16, ge=1, description="input dimension (mlp)")
    out_dim: int = Field(1, ge=1, description="output dimension (mlp)")
    widths: tuple[int, ...] | None = Field(
        None, description="mlp: student hidden widths; linear/rrr/dln: all layer widths, input first"
    )
    depth: int | None = Field(
        None, ge=1, description="mlp: hidden layers, with target_params instead of widths"
    )
    target_params: int | None = Field(None, ge=1, description="mlp: parameter budget that sets equal widths")
    activation: Literal["relu", "tanh", "gelu"] = "tanh"
    bias: bool = Field(True, description="mlp: biases in the student and teacher")
    teacher_widths: tuple[int, ...] = Field((8,), description="mlp: teacher hidden widths")
    x_dist: Literal["gauss_iso", "gauss_aniso", "mixture", "lowdim_manifold", "heavy_tail"] = "gauss_iso"
    noise: Literal["gauss", "hetero", "student_t", "outliers"] = "gauss"
    noise_scale: float = Field(0.1, ge=0)
    loss: str = Field(
        "mse",
        description="mse or t_regression; module: mse, cross_entropy or package.module:function "
        "(output, target) -> per-example losses",
    )
    true_rank: int | None = Field(None, ge=0, description="rrr/dln: rank of the teacher map")
    restrict: str | dict[str, str] | None = Field(
        None,
        description="module: the LLC of a part of the model: a glob over parameter names, {part: glob}, "
        "or heads (one part per attention head); docs/own-model.md",
    )

    # -- ERM to w* ------------------------------------------------------------------------
    erm_steps: int = Field(2000, ge=0)
    erm_lr: float = Field(1e-2, gt=0)

    # -- sampling ---------------------------------------------------------------------------
    sampler: Sampler = "sgld"
    chains: int = Field(8, ge=1)
    steps: Annotated[int, Field(ge=1)] | Literal["auto"] = Field(
        1000,
        description="sampling steps per chain after warm-up; steps // thin are recorded; auto (module, "
        "linear, rrr, dln: their default): extended until the chains fill, within a budget (samplers.md)",
    )
    warmup: int = Field(0, ge=0, description="steps before recording (HMC/MCLMC tune their step size here)")
    thin: int = Field(1, ge=1, description="record every thin-th step")
    eval_every: int = Field(0, ge=0, description="full-data loss and MALA check every k steps (0: never)")
    batch_size: int = Field(256, ge=1, description="minibatch size for sgld/sghmc (hmc/mclmc are full-batch)")
    step_size: Annotated[float, Field(gt=0)] | Literal["auto"] | None = Field(
        None, description="defaults per sampler; auto (sgld, sghmc): searched in warm-up (docs/samplers.md)"
    )
    gamma: Annotated[float, Field(ge=0)] | Literal["auto"] = Field(
        100.0,
        description="localization strength; auto (problem module, its default): weak at a minimum, strong "
        "where w* is not one, decided from the gradient at w* (docs/own-model.md)",
    )
    nbeta: float | None = Field(None, gt=0, description="n*beta; defaults to n / log n")
    precond: Literal["none", "rmsprop", "adam"] = Field("none", description="sgld preconditioner")
    friction: Annotated[float, Field(gt=0, lt=1)] | Literal["auto"] = Field(
        DEFAULT_FRICTION,
        description="sghmc momentum friction alpha; auto (with step_size=auto, its default there): set in "
        "warm-up from the minibatch noise (docs/samplers.md)",
    )
    n_leapfrog: int = Field(10, ge=1, description="hmc leapfrog steps per proposal")
    target_accept: float = Field(0.8, gt=0, lt=1, description="hmc acceptance targeted in warm-up")
    projections: int = Field(3, ge=0, description="random projections of w kept in the trace")

    # -- execution ---------------------------------------------------------------------------
    dtype: Literal["float32", "float64", "bfloat16", "float16"] = Field(
        "float32",
        description="bfloat16 | float16 (problem module): forward and backward under autocast, the chain "
        "state and the loss float32 (docs/own-model.md)",
    )
    device: str = Field("auto", description="auto | cpu | cuda | cuda:N")
    devices: tuple[str, ...] | None = Field(
        None,
        description="split the chains of one run across these devices, e.g. [cpu, cpu] (processes) or "
        "[cuda:0, cuda:1]: the same draws as one device (docs/own-model.md)",
    )
    gpu_mode: Literal["vectorized", "sequential", "off"] = "vectorized"
    threads: int = Field(0, ge=0, description="CPU threads (0: one for small models, else torch's default)")
    compile: bool | Literal["auto"] = Field(
        "auto",
        description="torch.compile each SGLD/SGHMC block step (other samplers: the gradient); "
        "auto: when the run is long enough to repay the compilation (docs/samplers.md)",
    )

    @model_validator(mode="before")
    @classmethod
    def _defaults(cls, data: Any) -> Any:
        """Defaults that depend on other keys; given keys win."""
        if not isinstance(data, dict):
            return data
        return _auto_friction(_module_defaults(_known_lambda_defaults(data)))

    @field_validator("widths", "teacher_widths")
    @classmethod
    def _positive_widths(cls, value: tuple[int, ...] | None) -> tuple[int, ...] | None:
        if value is not None and any(w < 1 for w in value):
            raise ValueError(f"every width must be >= 1, got {list(value)}")
        return value

    @field_validator("device")
    @classmethod
    def _known_device(cls, value: str) -> str:
        if value not in ("auto", "cpu", "cuda") and not (value.startswith("cuda:") and value[5:].isdigit()):
            raise ValueError(f"device must be auto, cpu, cuda or cuda:N, got {value!r}")
        return value

    @field_validator("devices")
    @classmethod
    def _known_devices(cls, value: tuple[str, ...] | None) -> tuple[str, ...] | None:
        for device in value or ():
            if device not in ("cpu", "cuda") and not (device.startswith("cuda:") and device[5:].isdigit()):
                raise ValueError(f"each device is cpu, cuda or cuda:N, got {device!r}")
        return value

    # The fingerprint of a module problem's Python objects (llc.estimate); None: from model/data/weights.
    _module_fingerprint: str | None = PrivateAttr(None)

    @model_validator(mode="after")
    def _consistent(self, info: ValidationInfo) -> RunConfig:
        if self.problem == "module":
            _check_module_keys(self, bool(info.context and info.context.get(IN_MEMORY_MODULE)))
        else:
            _check_builtin_keys(self)
        if self.problem == "mlp":
            if self.widths is None and (self.depth is None or self.target_params is None):
                raise ValueError(
                    "problem mlp needs widths (hidden layer widths) or both depth and target_params"
                )
        elif self.problem != "module":
            need = {
                "linear": "exactly 2 widths [M, N]",
                "rrr": "exactly 3 widths [M, H, N]",
                "dln": ">= 3 widths",
            }
            n = len(self.widths or ())
            ok = {"linear": n == 2, "rrr": n == 3, "dln": n >= 3}[self.problem]
            if not ok:
                raise ValueError(
                    f"problem {self.problem} needs widths with {need[self.problem]}, got {self.widths}"
                )
            if self.problem != "linear":
                if self.true_rank is None:
                    raise ValueError(
                        f"problem {self.problem} needs true_rank (0 <= true_rank <= min(widths))"
                    )
                if self.true_rank > min(self.widths or (0,)):
                    raise ValueError(f"true_rank must be <= min(widths) = {min(self.widths or (0,))}")
        if self.problem != "module" and self.sampler in MINIBATCH_SAMPLERS and self.batch_size > self.n_data:
            raise ValueError(f"batch_size ({self.batch_size}) must be <= n_data ({self.n_data})")
        if self.step_size == "auto":
            if self.sampler not in MINIBATCH_SAMPLERS:
                raise ValueError(
                    f"step_size=auto is for sgld and sghmc; {self.sampler} tunes its step size in warm-up "
                    "already (leave step_size unset)"
                )
            if self.warmup < AUTO_MIN_WARMUP:
                raise ValueError(f"step_size=auto searches during warm-up: set warmup >= {AUTO_MIN_WARMUP}")
            if self.compile is True:
                raise ValueError("step_size=auto runs eager: set compile=auto or false")
        if self.friction == "auto" and not (self.sampler == "sghmc" and self.step_size_auto):
            raise ValueError(
                "friction=auto is set alongside step_size=auto, for sghmc: set step_size=auto, or give a "
                f"friction in (0, 1) such as {DEFAULT_FRICTION}"
            )
        if self.gamma == "auto" and self.problem != "module":
            raise ValueError(
                f"gamma=auto is decided from your own model's w* (problem module); give problem "
                f"{self.problem} a number (its default: {_builtin_gamma(self.problem):g})"
            )
        if self.dtype in HALF_DTYPES and self.problem != "module":
            raise ValueError(
                f"dtype={self.dtype} is for your own model (problem module, llc.estimate); problem "
                f"{self.problem} takes float32 or float64"
            )
        if self.devices is not None:
            _check_devices(self)
        if self.precond != "none" and "precond" not in SAMPLERS[self.sampler].options:
            raise ValueError(f"precond applies to sgld only; set precond=none for sampler {self.sampler}")
        if self.restrict is not None:
            if self.problem != "module":
                raise ValueError(f"restrict applies to problem module (your own model), not {self.problem}")
            if self.compile is True:
                raise ValueError(
                    "restrict runs eager (its masks are not compiled): set compile=auto or false"
                )
            if isinstance(self.restrict, dict) and not self.restrict:
                raise ValueError("restrict: the mapping is empty; give {part name: glob}, one glob, or heads")
            if isinstance(self.restrict, str) and _misspelt_heads(self.restrict):
                raise ValueError(
                    f"restrict: {self.restrict!r} is no glob and no parameter name is likely to be it; "
                    "did you mean 'heads' (one estimate per attention head)?"
                )
        return self

    # -- derived values -------------------------------------------------------------------------
    @property
    def resolved_nbeta(self) -> float:
        return self.nbeta_for(self.n_data)

    def nbeta_for(self, n: int) -> float:
        """n·beta for a data set of n points: as given, else n / log n."""
        return self.nbeta if self.nbeta is not None else n / math.log(n)

    def with_module_fingerprint(self, fingerprint: str) -> RunConfig:
        """This config for a module problem given as Python objects with that fingerprint (llc.estimate)."""
        config = self.model_copy()
        config._module_fingerprint = fingerprint
        return config

    @property
    def module_fingerprint(self) -> str:
        """What the ids add for a module problem: its objects' fingerprint, else the hash of the weights
        file's content and of the factories' source (problems/module.py); empty for other problems."""
        if self.problem != "module":
            return ""
        if self._module_fingerprint is not None:
            return self._module_fingerprint
        from llc.modules.ids import reference_fingerprint

        return reference_fingerprint(self.model, self.data, self.loss, self.weights)

    @property
    def state_dtype(self) -> str:
        """The dtype of the chain state, the data and the loss: float32 under a half-precision dtype."""
        return "float32" if self.dtype in HALF_DTYPES else self.dtype

    @property
    def compute_dtype(self) -> str | None:
        """The dtype the model's forward and backward run in under autocast; None: the state's."""
        return self.dtype if self.dtype in HALF_DTYPES else None

    @property
    def initial_steps(self) -> int:
        """The steps sampled first: `steps`, or where steps=auto starts before it extends the chains."""
        return AUTO_INITIAL_STEPS if self.steps == "auto" else self.steps

    @property
    def step_budget(self) -> int:
        """The most steps a run samples: `steps`, or steps=auto's budget."""
        return AUTO_STEP_BUDGET * AUTO_INITIAL_STEPS if self.steps == "auto" else self.steps

    @property
    def step_size_auto(self) -> bool:
        return self.step_size == "auto"

    @property
    def resolved_friction(self) -> float:
        """The friction, or where friction=auto starts."""
        return self.friction if isinstance(self.friction, float) else DEFAULT_FRICTION

    @property
    def resolved_step_size(self) -> float:
        """The step size, or where step_size=auto starts its search."""
        return self.step_size if isinstance(self.step_size, float) else SAMPLERS[self.sampler].default_step

    @property
    def sampling(self) -> Sampling:
        """What the sampler's driver reads of this config (samplers/registry.py)."""
        resolved = {"friction": self.resolved_friction}
        options = {key: resolved.get(key, getattr(self, key)) for key in SAMPLERS[self.sampler].options}
        return Sampling(
            sampler=self.sampler, chains=self.chains, steps=self.initial_steps, warmup=self.warmup,
            thin=self.thin, eval_every=self.eval_every, projections=self.projections, seed=self.seed,
            threads=self.threads, compile=self.compile, gpu_mode=self.gpu_mode,
            step_size=self.resolved_step_size, step_size_auto=self.step_size_auto,
            friction_auto=self.friction == "auto", options=options,
        )  # fmt: skip

    def normalized(self) -> dict[str, Any]:
        """The config with every default made explicit: what run_id hashes and config.json stores."""
        data = self.model_dump(mode="json")
        # A module problem's n is its data's: n / log n is taken there (the data's source is in the ids).
        data["nbeta"] = self.nbeta if self.problem == "module" else self.resolved_nbeta
        data["step_size"] = "auto" if self.step_size_auto else self.resolved_step_size
        if data["restrict"] is None:  # unset, it leaves the ids of runs from before the key existed
            del data["restrict"]
        if self.full_batch_default:  # not the run of an explicit batch_size=256, whose batch it shows
            data["full_batch_up_to"] = FULL_BATCH_N
        return data

    @property
    def full_batch_default(self) -> bool:
        """Your own model's sgld or sghmc with no batch_size given: all the points up to FULL_BATCH_N."""
        return (
            self.problem == "module"
            and self.sampler in MINIBATCH_SAMPLERS
            and "batch_size" not in self.model_fields_set
        )

    @property
    def family_id(self) -> str:
        data = self.normalized()
        return _digest({k: data[k] for k in FAMILY_KEYS}, code_fingerprint() + self.module_fingerprint)

    @property
    def run_id(self) -> str:
        data = {k: v for k, v in self.normalized().items() if k not in NOT_IN_IDS}
        return _digest(data, code_fingerprint() + self.module_fingerprint)


def _known_lambda_defaults(data: dict[str, Any]) -> dict[str, Any]:
    """Defaults that let the known-λ problems estimate λ (KNOWN_LAMBDA_DEFAULTS)."""
    if data.get("problem") not in KNOWN_LAMBDA_PROBLEMS:
        return data
    data = {"gamma": KNOWN_LAMBDA_DEFAULTS["gamma"], **data}
    # steps=auto, with your own model's warm-up (HMC's and MCLMC's tuning, step_size=auto's search).
    if "steps" not in data:
        data = {"steps": "auto", "warmup": _default_warmup(AUTO_INITIAL_STEPS), **data}
    return _auto_step_size(data)


def _module_defaults(data: dict[str, Any]) -> dict[str, Any]:
    """Defaults that let your own model estimate λ (MODULE_MIN_WARMUP); given keys win."""
    if data.get("problem") != "module":
        return data
    data = {"gamma": "auto", "steps": "auto", **data}
    steps = AUTO_INITIAL_STEPS if data["steps"] == "auto" else data["steps"]
    if "warmup" not in data and isinstance(steps, int) and not isinstance(steps, bool):
        data["warmup"] = _default_warmup(steps)
    return _auto_step_size(data)


def _default_warmup(steps: int) -> int:
    return max(MODULE_MIN_WARMUP, round(MODULE_WARMUP_FRACTION * steps))


def _builtin_gamma(problem: str) -> float:
    return KNOWN_LAMBDA_DEFAULTS["gamma"] if problem in KNOWN_LAMBDA_PROBLEMS else 100.0


def _auto_step_size(data: dict[str, Any]) -> dict[str, Any]:
    """step_size=auto for sgld and sghmc when the warm-up is long enough for its search."""
    searchable = data.get("sampler", "sgld") in MINIBATCH_SAMPLERS
    warmup = data.get("warmup", 0)
    long_enough = isinstance(warmup, int) and warmup >= AUTO_MIN_WARMUP
    if searchable and long_enough and data.get("compile") is not True:
        data.setdefault("step_size", "auto")
    return data


def _auto_friction(data: dict[str, Any]) -> dict[str, Any]:
    """SGHMC with step_size=auto sets its friction too (friction=auto)."""
    if data.get("sampler") == "sghmc" and data.get("step_size") == "auto":
        return {"friction": "auto", **data}
    return data


def _check_module_keys(config: RunConfig, in_memory: bool) -> None:
    """A module problem names its factories (or comes as Python objects) and a loss it can compute."""
    for key in ("model", "data"):
        value = getattr(config, key)
        if value is None and not in_memory:
            raise ValueError(f"problem module needs {key}: package.module:factory")
        if value is not None and not _is_reference(value):
            raise ValueError(f"{key} must be package.module:factory, got {value!r}")
    if config.loss not in MODULE_LOSSES and not _is_reference(config.loss):
        raise ValueError(
            "loss for problem module must be mse, cross_entropy or package.module:function, "
            f"got {config.loss!r}"
        )


def _misspelt_heads(restrict: str) -> bool:
    """restrict: a word close to `heads`, without a glob's wildcards or a dotted parameter path."""
    if restrict == "heads" or any(c in restrict for c in "*?[."):
        return False
    return difflib.SequenceMatcher(None, restrict.lower(), "heads").ratio() >= 0.6


def _check_devices(config: RunConfig) -> None:
    """devices splits the chains on whole random streams (samplers/blocks.py), one share per device."""
    devices = config.devices or ()
    if not devices:
        raise ValueError("devices needs at least one device, e.g. devices=[cpu, cpu]")
    if config.problem != "module":
        raise ValueError(
            f"devices is for your own model (problem module, llc.estimate), not problem {config.problem}"
        )
    if config.gpu_mode == "sequential":
        raise ValueError("devices splits vectorized chains: set gpu_mode=vectorized, or leave devices out")
    if config.chains % STREAM or config.chains < STREAM * len(devices):
        fit = STREAM * len(devices) * max(1, math.ceil(config.chains / (STREAM * len(devices))))
        raise ValueError(
            f"devices splits the chains in whole random streams of {STREAM}: chains must be a multiple of "
            f"{STREAM}, at least one stream per device; got chains={config.chains} for {len(devices)} "
            f"devices (try chains={fit})"
        )
    if config.step_size_auto:
        raise ValueError(
            "step_size=auto searches the step over all chains at once: with devices, give a step_size "
            f"(sgld's default is {SAMPLERS['sgld'].default_step:g})"
        )
    if config.sampler == "mclmc":
        raise ValueError("devices splits sgld, sghmc and hmc runs; mclmc runs on one device (drop devices)")


def _check_builtin_keys(config: RunConfig) -> None:
    for key in ("model", "data", "weights"):
        if getattr(config, key) is not None:
            raise ValueError(f"{key} applies to problem module only (got problem {config.problem})")
    if config.loss not in BUILTIN_LOSSES:
        raise ValueError(
            f"loss must be one of {', '.join(BUILTIN_LOSSES)} for problem {config.problem}, got "
            f"{config.loss!r} (cross_entropy and package.module:function are for problem module)"
        )


def _is_reference(value: str) -> bool:
    module, sep, attr = value.partition(":")
    names = [*module.split("."), *attr.split(".")]
    return bool(sep) and all(name.isidentifier() for name in names)


def _digest(data: dict[str, Any], code: str) -> str:
    text = json.dumps(data, sort_keys=True, separators=(",", ":")) + code
    return hashlib.sha256(text.encode()).hexdigest()[:16]


PRESETS: dict[str, dict[str, Any]] = {
    # Seconds on a laptop CPU: a small teacher-student problem and short chains.
    "quick": {"n_data": 1000, "widths": (16, 16), "teacher_widths": (4,), "erm_steps": 500, "chains": 4,
              "steps": 300, "warmup": 50, "batch_size": 128},
    # Results worth reporting: the reference workload's size and long chains.
    "full": {"n_data": 5000, "widths": (64, 64), "teacher_widths": (8,), "erm_steps": 5000, "chains": 8,
             "steps": 5000, "warmup": 500, "batch_size": 256, "eval_every": 100},
}  # fmt: skip


def read_config_file(path: Path) -> dict[str, Any]:
    """A YAML mapping of config keys, and optionally `preset` (llc calibrate's recommended.yaml is one)."""
    try:
        data = yaml.safe_load(Path(path).read_text())
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror or exc}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {path} is not valid YAML: {getattr(exc, 'problem', exc)}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path}: expected a mapping of keys, got {data!r}")
    return data


def build_config(preset: str | None = None, overrides: dict[str, Any] | None = None) -> RunConfig:
    """Preset values, then overrides; every problem is reported as one ConfigError naming the keys."""
    if preset is not None and preset not in PRESETS:
        raise ConfigError(f"unknown preset {preset!r}; choose one of {sorted(PRESETS)}")
    values = {**PRESETS.get(preset or "", {}), **(overrides or {})}
    try:
        return RunConfig(**values)
    except ValidationError as exc:
        raise ConfigError(describe_validation_error(exc)) from None


def describe_validation_error(exc: ValidationError) -> str:
    """One line per problem: the key, what was given, and what is allowed."""
    known = list(RunConfig.model_fields)
    errors = merge_union_branches(exc.errors(), known)
    return describe(errors, lambda _: known, "invalid configuration", DEVINTERP_NAMES)


# devinterp's argument names (estimate_learning_coeff_with_summary, its SGLD's optimizer_kwargs), read
# before the closest spelling: `localization` is `gamma`, not `activation` (docs/from-devinterp.md).
DEVINTERP_NAMES: dict[str, str] = {
    "lr": "did you mean 'step_size'? devinterp's lr is the same ε",
    "localization": "did you mean 'gamma'? devinterp's localization is the same γ",
    "elasticity": "did you mean 'gamma'? devinterp's old name for the localization γ",
    "temperature": "did you mean 'nbeta'? devinterp's deprecated name for nβ",
    "num_chains": "did you mean 'chains'?",
    "num_draws": "did you mean 'steps'? steps = num_draws × num_steps_bw_draws, thin = num_steps_bw_draws",
    "num_steps_bw_draws": "did you mean 'thin'? and steps = num_draws × thin",
    "num_burnin_steps": "did you mean 'warmup'?",
    "optimizer_kwargs": "give its keys directly: lr as step_size, localization as gamma, nbeta as nbeta",
    "sampling_method": "did you mean 'sampler'? sgld, sghmc, hmc or mclmc",
    "noise_level": "no such setting: the noise is always N(0, ε), devinterp's noise_level=1",
    "weight_decay": "no such setting: the posterior's only prior is the localization gamma",
    "cores": "did you mean 'threads'? all chains run at once in one process",
    "grad_accum_steps": "did you mean 'batch_size'? one gradient takes the whole minibatch",
    "init_loss": "no such setting: L0 is the loss at w* over all the data",
}
