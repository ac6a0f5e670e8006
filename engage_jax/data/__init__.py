"""Dialogue data: records, corpus loaders (ESConv, P4G), the sandbox world, chat formatting and
SFT examples. Submodules: dialogue, chat, esconv, p4g, sandbox, sft, stats."""
from engage_jax.data.chat import (END_MARKER, OUTCOME_REQUEST, agent_messages, format_condition,
                                  has_end_marker, outcome_line, simulator_messages,
                                  strip_end_marker, with_end_marker)
from engage_jax.data.dialogue import (AGENT, ROLES, TASKS, USER, Dialogue, LoadedDialogues, Turn,
                                      merge_consecutive)
from engage_jax.data import esconv, p4g, sandbox, sft
from engage_jax.data.sft import (BatchIterator, Example, agent_examples, build_arrays,
                                 default_buckets, pad_to_buckets, simulator_examples)

__all__ = [
    "AGENT", "USER", "ROLES", "TASKS", "Turn", "Dialogue", "LoadedDialogues", "merge_consecutive",
    "END_MARKER", "OUTCOME_REQUEST", "agent_messages", "simulator_messages", "outcome_line",
    "format_condition", "with_end_marker", "has_end_marker", "strip_end_marker",
    "esconv", "p4g", "sandbox", "sft", "Example", "BatchIterator", "agent_examples",
    "simulator_examples", "build_arrays", "pad_to_buckets", "default_buckets",
]
