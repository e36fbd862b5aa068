"""thinkrm: measure and improve how language models reason.

The public API, by pipeline stage (trace -> steps -> dag -> me2 -> judge / reward model -> serve / bon / rl).
Names are resolved lazily so that `import thinkrm` stays light: torch and friends load only when a name
that needs them is first used.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    # trace input
    "Trace": "thinkrm.trace",
    "load_traces": "thinkrm.trace",
    "split_response": "thinkrm.trace",
    "InputError": "thinkrm.io",
    # steps and DAG
    "Step": "thinkrm.steps",
    "split_steps": "thinkrm.steps",
    "DAG": "thinkrm.dag",
    "build_dag": "thinkrm.dag",
    "Lexicon": "thinkrm.delimiters",
    "mine_lexicon": "thinkrm.delimiters",
    "get_structurer": "thinkrm.structurers",
    "Proposal": "thinkrm.structurers",
    "View": "thinkrm.structurers",
    # ME² analysis and the HTML report
    "analyze": "thinkrm.me2",
    "Analysis": "thinkrm.me2",
    "SIGNALS": "thinkrm.me2",
    "ReportWriter": "thinkrm.report",
    # reward models
    "Item": "thinkrm.formatting",
    "format_input": "thinkrm.formatting",
    "Scorer": "thinkrm.scoring",
    "load_scorer": "thinkrm.scoring",
    "checked_scores": "thinkrm.scoring",
    "score_chunks": "thinkrm.scoring",
    "Pair": "thinkrm.pairs",
    "load_pairs": "thinkrm.pairs",
    "evaluate_pairs": "thinkrm.evaluate",
    "LiteScorer": "thinkrm.lite",
    "train_lite": "thinkrm.lite",
    "perturb_trace": "thinkrm.perturb",
    "perturb_records": "thinkrm.perturb",
    "TrainConfig": "thinkrm.train",
    # LLM pipeline
    "LLMClient": "thinkrm.llm.client",
    "LLMConfig": "thinkrm.llm.client",
    "JudgeConfig": "thinkrm.llm.judge",
    "judge_pair": "thinkrm.llm.judge",
    "judge_file": "thinkrm.llm.judge",
    "BuildConfig": "thinkrm.llm.build_pairs",
    # serving
    "Client": "thinkrm.client",
    "ServeConfig": "thinkrm.serving.config",
    "create_app": "thinkrm.serving.app",
    # verification, Best-of-N and RL rewards
    "extract_answer": "thinkrm.verify",
    "verify_batch": "thinkrm.verify",
    "same_answer": "thinkrm.verify",
    "Verifier": "thinkrm.verifiers",
    "load_verifier": "thinkrm.verifiers",
    "best_of_n": "thinkrm.bon",
    "load_candidates": "thinkrm.bon",
    "gated": "thinkrm.rewards",
    "gated_batch": "thinkrm.rewards",
    "Calibration": "thinkrm.calibration",
    "fit_calibration": "thinkrm.calibration",
    "ThinkingReward": "thinkrm.rewards",
    "thinking_reward": "thinkrm.rewards",
}

__all__ = sorted(_EXPORTS)


def _lazy_attributes(namespace: dict[str, Any], exports: dict[str, str]) -> tuple[Any, Any]:
    """`__getattr__` and `__dir__` (PEP 562) for a package whose names, `exports` = {name: module path}, load
    their module on first use and are then cached in the package's `namespace`. Shared with the subpackages
    that must stay as light to import (`thinkrm.serving`)."""

    def __getattr__(name: str) -> Any:
        module = exports.get(name)
        if module is None:
            raise AttributeError(f"module {namespace['__name__']!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(module), name)
        namespace[name] = value
        return value

    def __dir__() -> list[str]:
        return sorted({*namespace, *exports})

    return __getattr__, __dir__


__getattr__, __dir__ = _lazy_attributes(globals(), _EXPORTS)
