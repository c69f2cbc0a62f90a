"""What can be named in a config: `--list` on the CLIs, and the config sections one run uses.

A researcher should not have to read the registries' source to learn which distillers, backbones,
heads, datasets and recipes exist, nor scroll through every method's keys in a dry-run report.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from yacs.config import CfgNode as CN

ROOT = Path(__file__).resolve().parents[1]
TOP_LEVEL = ("EXPERIMENT", "DATA", "TEACHER", "STUDENT", "DISTILL", "SOLVER", "EVAL", "LOG")


def method_defaults(name: str, cls: type) -> list[tuple[str, Any, str]]:
    """(KEY, default, doc) of a distiller's `DISTILL.<NAME>` node, from the class's `defaults`
    declaration ({KEY: (default, doc[, choices])}); a method sharing another's node (arcdistill reads
    ADADISTILL) lists that node's keys."""
    from utility.config import METHOD_KEY_DOCS, get_defaults

    node_name = cls.config_node or name.upper()
    node = get_defaults().DISTILL.get(node_name)
    if not isinstance(node, CN):
        return []
    return [(key, value, METHOD_KEY_DOCS.get(f"DISTILL.{node_name}.{key}", "")) for key, value in node.items()]


def recipes(root: Path = ROOT / "configs") -> dict[str, list[str]]:
    """Recipe YAMLs by folder (`face/a_skd`, `cifar100/kd`, ...), shared `base.yaml` files left out."""
    grouped: dict[str, list[str]] = {}
    for path in sorted(root.rglob("*.yaml")):
        if path.name == "base.yaml" or path.name.endswith("_base.yaml"):
            continue
        grouped.setdefault(str(path.parent.relative_to(root)), []).append(path.stem)
    return grouped


def catalogue() -> str:
    """The text `--list` prints."""
    from data import DATASETS
    from kd import DISTILLERS
    from models import BACKBONES, HEADS

    lines = ["distillers (DISTILL.TYPE; join several with '+', e.g. dct+kd), with their DISTILL.<NAME> keys:"]
    for name in DISTILLERS.names():
        keys = method_defaults(name, DISTILLERS.get(name))
        lines.append(f"  {name}" + ("" if keys else "  (no DISTILL keys of its own)"))
        for key, default, doc in keys:
            lines.append(f"      DISTILL.{name.upper()}.{key} = {default!r}" + (f"  # {doc}" if doc else ""))
    lines.append("backbones (TEACHER/STUDENT.BACKBONE):")
    families: dict[str, list[str]] = {}
    for name in BACKBONES.names():
        family, _, short = name.partition(".")
        families.setdefault(family, []).append(short or family)
    lines += [f"  {family}.: {', '.join(names)}" for family, names in families.items()]
    lines.append(f"heads (TEACHER/STUDENT.HEAD): {', '.join(HEADS.names())}")
    lines.append(f"datasets (DATA.FORMAT, or auto): {', '.join(DATASETS.names())}")
    lines.append("recipes (configs/<domain>/<folder>/<name>.yaml), by domain:")
    domain = None
    for folder, names in recipes().items():
        head, _, rest = folder.partition("/")
        if head != domain:
            domain = head
            lines.append(f"  {domain}:")
        lines.append(f"    {rest + '/' if rest else ''}: {', '.join(names)}" if rest else f"    {', '.join(names)}")
    return "\n".join(lines)


def used_sections(cfg: Any, role: str, method_names: list[str]) -> str:
    """The resolved config restricted to what this run reads, as YAML.

    A teacher run reads TEACHER (not STUDENT, not DISTILL); a student run without a teacher-using
    method still shows TEACHER only when it names a backbone; DISTILL keeps TYPE, CE_WEIGHT and the
    nodes of the methods in use.
    """
    shown = CN()
    for section in TOP_LEVEL:
        if section == "STUDENT" and role == "teacher":
            continue
        if section == "TEACHER" and role == "student" and not cfg.TEACHER.BACKBONE:
            continue
        if section == "DISTILL":
            if role == "teacher":
                continue
            node = CN({k: v for k, v in cfg.DISTILL.items() if not isinstance(v, CN)})
            for name in method_names:
                sub = cfg.DISTILL.get(name.upper())
                if isinstance(sub, CN):
                    node[name.upper()] = sub.clone()
            shown[section] = node
            continue
        shown[section] = cfg[section].clone()
    return shown.dump()
