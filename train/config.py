"""Training configuration of the torch, TF and JAX trainers, generated from the settings table
(``train.settings.SETTINGS``): ``TrainConfig``, valid once constructed (each setting checked against
its type and rule, the penalty settings by the core), the command line and the presets."""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from train.penalties import DATA_RANGE, PAPER_MODES, PENALTY_FIELDS, VALP_FIELDS
from train.seeds import stream_seed
from train.settings import BY_NAME, PRESET_NAMES, PRESETS, RUN_INFO_KEY, SETTINGS, Setting
from valr_core import ValpConfig

_CORE = ValpConfig()  # the core's defaults (the paper mode of each penalty: PAPER_MODES)
# Penalty flags: core field -> (flag, type or choices or "bool", help), for tools that list them.
FLAGS: dict[str, tuple[str, Any, str]] = {
    s.name: (s.option, "bool" if s.name == "clip" else s.choices or s.kind, s.help)
    for s in SETTINGS if s.name in PENALTY_FIELDS}


class ConfigError(ValueError):
    """An invalid setting; the message names the command-line flag (or the --config key)."""


def lr_at(base_lr: float, step: int, total_steps: int, decay: str = "linear") -> float:
    """Learning rate for the update made at 0-based iteration ``step`` (linear: to 0 at the end)."""
    return base_lr if decay == "constant" else base_lr * max(0.0, 1.0 - step / total_steps)


_KIND_WORDS = {int: "an integer", float: "a number", str: "a string", bool: "true or false",
               dict: "a JSON object", tuple: "a list of two numbers"}


def has_kind(value: Any, setting: Setting) -> bool:
    """``value`` has the setting's declared type: bool is not an int, a number is not a string."""
    if value is None:
        return setting.optional
    if setting.kind is tuple:
        return isinstance(value, list | tuple) and len(value) == 2 and all(
            isinstance(v, int | float) and not isinstance(v, bool) for v in value)
    kind = int | float if setting.kind is float else setting.kind  # an int is a number
    return isinstance(value, kind) and (setting.kind is bool or not isinstance(value, bool))


def _expected(setting: Setting) -> str:
    return _KIND_WORDS[setting.kind] + (" or null" if setting.optional else "")


class _TrainConfigMethods:
    """What every TrainConfig does; its fields are generated from the settings table."""

    def __post_init__(self) -> None:
        if self.extra is None:
            self.extra = {}
        if isinstance(self.clip, list):  # JSON has no tuples
            self.clip = tuple(self.clip)
        for s in SETTINGS:
            value = getattr(self, s.name)
            if not has_kind(value, s):
                raise ConfigError(f"{s.option} must be {_expected(s)}, got {value!r}")
            if value is None:
                continue
            if s.choices is not None and value not in s.choices:
                raise ConfigError(f"{s.option} must be one of {s.choices}, got {value!r}")
            if s.check is not None and not s.check(value):
                raise ConfigError(f"{s.option} {s.rule}, got {value!r}")
        if self.data == "folder" and not self.data_path:
            raise ConfigError("--data folder needs --data-path pointing to a folder of images")
        if self.eval_every > 0 and self.eval_samples < 10:
            raise ConfigError(f"--eval-samples must be >= 10 when --eval-every is set, got {self.eval_samples!r}")
        try:  # the core's validation (one rule set), its message prefixed with the flag's name
            ValpConfig(**self.penalty_settings())
        except (TypeError, ValueError) as e:
            field_name = str(e).split(" ", 1)[0].split("[", 1)[0]
            option = BY_NAME[field_name].option if field_name in BY_NAME else "--" + self.penalty
            raise ConfigError(f"{option}: {e}") from None

    def validate(self) -> TrainConfig:
        """Validation happens at construction; this re-checks a config changed in place."""
        return dataclasses.replace(self)  # type: ignore[type-var]

    @property
    def effective_data_seed(self) -> int:
        # A distinct default stream, so changing model init never changes the batches.
        return self.data_seed if self.data_seed is not None else stream_seed(self.seed, "data")

    def architecture(self) -> dict[str, Any]:
        """What a checkpoint must match to load into this run's models (a trainer may add its own
        under ``extra["architecture"]``)."""
        return {
            "z_dim": self.z_dim, "gen_channels": self.gen_channels, "critic_channels": self.critic_channels,
            "image_size": self.image_size, "image_channels": 3,
            **({"arch": self.arch} if self.arch != "resnet" else {}),  # resnet checkpoints predate it
            **({"critic_norm": self.critic_norm} if self.critic_norm != "none" else {}),
            **dict(self.extra.get("architecture", {})),
        }

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)  # type: ignore[call-overload]

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> TrainConfig:
        """Settings from JSON, each checked against its declared type first; ConfigError names the key."""
        if unknown := sorted(set(d) - set(BY_NAME)):
            raise ConfigError(f"unknown config field(s) {unknown}")
        for key, value in d.items():
            if not has_kind(value, BY_NAME[key]):
                got = f"{json.dumps(value)} ({type(value).__name__})"
                raise ConfigError(f"{key!r} must be {_expected(BY_NAME[key])}, got {got}")
        return cls(**d)  # type: ignore[return-value]

    def replace(self, **changes: Any) -> TrainConfig:
        return dataclasses.replace(self, **changes)  # type: ignore[type-var]

    def penalty_settings(self) -> dict[str, Any]:
        """The penalty fields, by the core's names (what ``train.penalties.make_penalty`` takes);
        an unset mode is the penalty's paper mode."""
        settings = {name: getattr(self, name) for name in PENALTY_FIELDS}
        if settings["mode"] is None:
            settings["mode"] = PAPER_MODES.get(self.penalty, _CORE.mode)
        return settings


TrainConfig = dataclasses.make_dataclass(
    "TrainConfig", [(s.name, Any, dataclasses.field(default_factory=dict) if s.kind is dict
                     else dataclasses.field(default=s.default)) for s in SETTINGS], bases=(_TrainConfigMethods,),
    namespace={"__doc__": "Every setting of a training run (train.settings.SETTINGS); valid once constructed."})
TrainConfig.__module__ = __name__


def preset_config(name: str, **overrides: Any) -> TrainConfig:
    """The preset's settings with ``overrides`` applied."""
    if name not in PRESETS:
        raise ConfigError(f"--preset must be one of {PRESET_NAMES}, got {name!r}")
    return TrainConfig(preset=name, **{**PRESETS[name], **overrides})


def ignored_settings(cfg: TrainConfig) -> dict[str, str]:
    """The settings the chosen penalty and mode never read, each with what is used instead (a flag
    given for one is refused, not silently ignored)."""
    if cfg.penalty == "none":
        return dict.fromkeys(PENALTY_FIELDS, "--penalty none adds no penalty (weight clipping is --clip-weights)")
    ignored = {} if cfg.penalty == "valp" else dict.fromkeys(
        VALP_FIELDS, f"--penalty {cfg.penalty} has no VALP settings (it uses --lam, --mode, --rho and --reduction)")
    mode = cfg.penalty_settings()["mode"]
    if mode == "al":
        ignored["lam"] = "with --mode al (VALP's default) the penalty is mu * R(L) + rho/2 * R(L^2): set --rho instead"
    else:
        ignored["rho"] = f"with --mode {mode} the penalty's weight is --lam; --rho is the augmented Lagrangian's (--mode al)"
    return ignored


def _add_flag(group: Any, s: Setting) -> None:
    if s.name == "clip":  # True / False (None: not given); given_settings makes it the range or None
        group.add_argument(s.option, dest=s.name, action="store_const", const=True, default=None,
                           help=f"{s.help}; --no-{s.option[2:]} turns it off")
        group.add_argument("--no-" + s.option[2:], dest=s.name, action="store_const", const=False,
                           help=argparse.SUPPRESS)
    elif s.name == "resume":
        group.add_argument(s.option, dest=s.name, nargs="?", const="auto", default=None, help=s.help)
    elif s.kind is bool:
        group.add_argument(s.option, dest=s.name, action=argparse.BooleanOptionalAction, default=None, help=s.help)
    elif s.choices is not None:
        group.add_argument(s.option, dest=s.name, choices=s.choices, default=None, help=s.help)
    else:
        group.add_argument(s.option, dest=s.name, type=s.kind, default=None, help=s.help, metavar=s.metavar)


def build_parser(framework: str = "", description: str | None = None) -> argparse.ArgumentParser:
    """The command line shared by all trainers, one flag per setting of the table. Unset flags
    (None) keep the preset's value."""
    p = argparse.ArgumentParser(
        formatter_class=_PresetDefaultsFormatter,
        prog=f"python -m train.{framework}_wgan" if framework else None,
        description=description or f"WGAN with VALP / GP / LP on CIFAR-10 ({framework or 'any framework'})",
    )
    groups = {name: p.add_argument_group(name) for name in dict.fromkeys(s.group for s in SETTINGS)}
    run = groups["run"]
    run.add_argument("--preset", choices=PRESET_NAMES, default="paper", help="base settings (default: paper)")
    run.add_argument("--config", dest="config_file", default=None, metavar="RUN_DIR/config.json",
                     help="rerun a saved run: its config.json is the base (instead of --preset); flags given override it")
    run.add_argument("--debug", action="store_true", default=None,
                     help="on an error, print the full traceback (default: one line)")
    run.add_argument("--print-config", dest="print_config", action="store_true", default=None,
                     help="print the resolved settings (preset, --config, --resume and flags applied) as JSON and exit")
    groups["optimisation"].add_argument("--lr", type=float, default=None, help="sets both --lr-g and --lr-d")
    for s in SETTINGS:
        if s.flag is not None:
            _add_flag(groups[s.group], s)
    return p


class _PresetDefaultsFormatter(argparse.HelpFormatter):
    """--help with each setting's value under the chosen preset (``--preset smoke --help``: smoke's)."""

    def __init__(self, prog: str, preset: str = "paper", **kwargs: Any) -> None:
        super().__init__(prog, **kwargs)
        self._preset = preset

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        if action.dest in BY_NAME and text != argparse.SUPPRESS:
            value = PRESETS[self._preset].get(action.dest, BY_NAME[action.dest].default)
            text = f"{text} ({self._preset}: {value})".strip()
        return text


def _show_preset_in_help(parser: argparse.ArgumentParser, argv: Sequence[str] | None) -> None:
    """Read ``--preset`` ahead of parsing, so that ``--help`` (wherever it stands) shows its values."""
    ahead = argparse.ArgumentParser(add_help=False)
    ahead.add_argument("--preset", default="paper")
    preset = ahead.parse_known_args(argv)[0].preset
    if preset in PRESETS and isinstance(parser.formatter_class, type) and issubclass(parser.formatter_class, _PresetDefaultsFormatter):
        parser.formatter_class = functools.partial(_PresetDefaultsFormatter, preset=preset)  # type: ignore[assignment]


def given_settings(args: argparse.Namespace) -> dict[str, Any]:
    """The flags given (unset ones are None) as settings: ``--lr`` is --lr-g and --lr-d, the
    clip switch the data range or None; a trainer's own flags stay under their names."""
    given = {k: v for k, v in vars(args).items()
             if v is not None and k not in ("preset", "lr", "debug", "config_file", "print_config")}
    if getattr(args, "lr", None) is not None:
        given.setdefault("lr_g", args.lr)
        given.setdefault("lr_d", args.lr)
    if "clip" in given:
        given["clip"] = DATA_RANGE if given["clip"] else None
    return given


def config_from_args(args: argparse.Namespace, framework: str = "") -> TrainConfig:
    """Preset (or ``--config``) + explicitly given flags -> a TrainConfig (ConfigError names the flag)."""
    overrides = given_settings(args)
    # Flags a trainer adds to the shared parser land in cfg.extra.
    extra = {k: overrides.pop(k) for k in list(overrides) if k not in BY_NAME}
    if framework:
        overrides["framework"] = framework
    config_file = getattr(args, "config_file", None)
    if config_file:
        cfg = TrainConfig.from_dict({**saved_settings(config_file), "resume": None, **overrides})
    else:
        cfg = preset_config(args.preset, **overrides)
    cfg.extra.update(extra)
    for name in overrides:
        if reason := ignored_settings(cfg).get(name):
            raise ConfigError(f"{BY_NAME[name].option} has no effect here: {reason}")
    return cfg


def parse_config(argv: Sequence[str] | None = None, framework: str = "",
                 parser: argparse.ArgumentParser | None = None) -> TrainConfig:
    """Parse ``argv``; invalid values exit via ``parser.error`` with the flag named."""
    parser = parser or build_parser(framework)
    _show_preset_in_help(parser, argv)
    args = parser.parse_args(argv)
    try:
        return config_from_args(args, framework)
    except ConfigError as e:
        parser.error(str(e))
        raise  # unreachable: parser.error exits


def read_run_config(path: Path, option: str) -> dict[str, Any]:
    """A run's config.json as read from disk; ConfigError names ``option`` and the file."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise ConfigError(f"{option} {path}: cannot read a saved config ({e})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{option} {path}: not a saved config (expected a JSON object)")
    return data


def saved_settings(path: str | Path) -> dict[str, Any]:
    """The settings of a saved run's config.json, its launch record dropped (ConfigError names
    ``--config`` and the file)."""
    p = Path(path)
    p = p / "config.json" if p.is_dir() else p
    data = read_run_config(p, "--config")
    data.pop(RUN_INFO_KEY, None)
    try:
        TrainConfig.from_dict(data)
    except (ConfigError, TypeError) as e:
        raise ConfigError(f"--config {p}: {e}") from None
    return data
