"""The evaluation's held-out conditions share nothing with what the agent was trained or searched
on: not the dialogue ids, not the condition and opening turns (real corpora: the test split against
the train split that SFT and the search roots come from)."""
from __future__ import annotations

import pytest

from engage_jax import build
from tests.test_bad_inputs import _config


def _source_id(root) -> str:
  """The corpus dialogue id behind a root ("eval-<id>" / "search-<id>")."""
  return root.id.split("-", 1)[1]


def _content(d) -> str:
  return repr(sorted(d.condition.items())) + "|" + "|".join(t.text for t in d.turns[:2])


@pytest.mark.parametrize("name", ["esconv_tiny", "p4g_tiny"])
def test_real_corpus_eval_conditions_are_disjoint_from_sft_and_search(name, data_dir):
  cfg = _config(name, data__path=str(data_dir / name.split("_")[0]), eval__n_conditions=500,
                search__n_conditions=500)
  corpus = build.load_corpus(cfg)
  held_out = build.eval_conditions(cfg)
  search = build.roots(cfg, corpus, "search", cfg.search.n_conditions)
  assert len(held_out) >= 60 and len(search) == 500
  train_ids = {d.id for d in corpus["train"]}
  eval_ids = {_source_id(r) for r in held_out}
  assert len(eval_ids) == len(held_out)
  assert eval_ids <= {d.id for d in corpus["test"]}
  assert not eval_ids & train_ids and not eval_ids & {_source_id(r) for r in search}
  assert {_source_id(r) for r in search} <= train_ids
  # the same condition and opening under another id would be a leak too
  train_content = {_content(d) for d in corpus["train"]}
  leaked = [r.id for r in held_out if r.condition and _content(r) in train_content]
  assert not leaked, leaked


def test_sandbox_eval_conditions_are_another_draw_than_the_search_roots():
  """The sandbox draws conditions from a small space, so single conditions may repeat; the ids
  differ and the evaluation's sequence of conditions is not the search's (another seed)."""
  cfg = _config("sandbox_es", eval__n_conditions=24, search__n_conditions=24)
  held_out = build.eval_conditions(cfg)
  search = build.roots(cfg, {}, "search", 24)
  assert not {r.id for r in held_out} & {r.id for r in search}
  assert [r.condition for r in held_out] != [r.condition for r in search]
  assert [r.condition for r in held_out] == [r.condition for r in build.eval_conditions(cfg)]
