"""The embedded sandbox world: procedurally generated ES-like and P4G-like corpora with KNOWN
dynamics, small enough that a 2-layer d=128 model learns them on 2 CPU cores in minutes.

`generate(task, n, seed, ...) -> list[Dialogue]` returns the same records as the real loaders.
Texts are short lower-case templates with a small vocabulary (a dialogue is well under 150 BPE
tokens). Agent templates of different strategies are disjoint, so `strategy_of(text)` recovers
the strategy of any agent text (exactly for template texts; by distinctive words otherwise).

ES-like world (task "es")
-------------------------
condition = {emotion_type ∈ EMOTIONS, problem_type ∈ PROBLEMS, situation: a templated sentence}.
1. The user speaks first: "hi . i feel {adjective} because of {problem phrase} ." (states both).
2. The agent answers with one of ES_STRATEGIES (ESConv names), text drawn from its templates.
   The corpus agent picks strategies uniformly at random (`p_optimal=0`), so SFT learns a uniform
   policy; with `p_optimal=q` it picks the helpful strategy with probability q + (1 - q) / 4.
3. After each agent turn the user, independently per turn, says an ENGAGED line (matches
   `rewards.DEFAULT_ES_PATTERN`, e.g. "thank you , i feel much better now .") and the chat ends,
   with probability
       P_HELP = 0.6  if the agent used HELPFUL[emotion_type], else P_BASE = 0.08;
   otherwise a non-engaged continuation line.
4. After ES_MAX_TURNS = 3 agent turns without engagement the user's reply is a non-engaged
   goodbye instead of a continuation, and the chat ends.
   P(engaged) = 1 - prod_t (1 - p_t): always helpful 1 - 0.4^3 = 0.936; uniform corpus agent
   (p_t = 0.25*0.6 + 0.75*0.08 = 0.21) 1 - 0.79^3 ≈ 0.507; never helpful 1 - 0.92^3 ≈ 0.221.
   HELPFUL: anxiety, fear → Affirmation and Reassurance; sadness, anger → Reflection of
   feelings; Restatement or Paraphrasing and Providing Suggestions never help. Two strategies
   help half of the users each, so a strategy's helpfulness has a *marginal* signal (0.34 vs
   0.08 per turn) besides its interaction with the emotion: with one helpful strategy per
   emotion the marginal of every strategy is the same 0.21 (a pure XOR-like dependence), which
   tiny simulators did not pick up in 800 SFT steps. An agent that plays only the two helpful
   strategies at random reaches 1 - 0.66^3 ≈ 0.71; the condition-aware optimum 0.936.

P4G-like world (task "p4g")
---------------------------
condition = {motivation ∈ MOTIVATIONS, age_group ∈ AGE_GROUPS (decorative), hobby ∈ HOBBIES
(decorative)}.
1. The agent speaks first with a fixed greeting ("hi ! have you heard of save the children ?",
   strategy "Greeting"); the user replies with a line that reveals its motivation (e.g. a
   "numbers" user: "maybe . i like to see the numbers first ."), so a policy can adapt.
2. Then P4G_STRATEGY_TURNS = 3 persuasion turns, each one of P4G_STRATEGIES (uniform in the
   corpus). EFFECTIVE[motivation] is the one that works: numbers, trust → Logical appeal;
   feelings, people → Emotion appeal; Credibility appeal and Personal story never work (each
   effective strategy serves half of the users, for the same learnability reason as in ES).
   After an effective turn the user replies with a positive line, otherwise a lukewarm line
   (deterministic given effectiveness; texts drawn at random from small pools).
3. The last user turn is a closing line; the donation is drawn from DONATION_PROBS[k] over
   DONATION_VALUES = (0, 0.25, 0.5, 1, 2), k = number of effective persuasion turns (0..3):
       k=0: (0.50, 0.20, 0.15, 0.10, 0.05) mean 0.325
       k=1: (0.30, 0.20, 0.20, 0.20, 0.10) mean 0.550
       k=2: (0.10, 0.10, 0.20, 0.30, 0.30) mean 1.025
       k=3: (0.00, 0.05, 0.10, 0.20, 0.65) mean 1.5625
   Uniform corpus agent: k ~ Binomial(3, 1/4), mean donation ≈ 0.537; optimum 1.5625.
   outcome = {"donation": d, "donation_raw": d, "num_effective": k}.

Delayed-effect worlds (`world="delayed"`, issue 28; docs/results/sandbox_delayed_*.md)
--------------------------------------------------------------------------------------
Same conditions, openings and agent templates; DELAYED_TURNS = 3 agent turns (ES) / persuasion
turns (P4G), always played to the end; the corpus agent is uniform over the 4 strategies. One
strategy pleases now and closes the path, one sounds lukewarm now and pays off later; the
dynamics do not depend on the condition (emotion / motivation only shape the texts).
ES: before the last turn the user answers Affirmation and Reassurance with a WARM line that
   matches the engagement regex ("oh , that helps , thank you ."), any other strategy with a
   non-engaged continuation. After the last agent turn the user says "... i feel better ..."
   (ES_DELAYED_BETTER) with probability es_delayed_p(strategies), else a goodbye:
     any Reassurance                                   ES_DELAYED_P_CLOSED = 0.10 (path closed)
     no Providing Suggestions                          ES_DELAYED_P_NO_PLAN = 0.25
     first Suggestion after r Reflections, r = 0/1/2+  ES_DELAYED_P_PLAN = 0.10 / 0.80 / 0.90
   Long-run optimum 0.90 (Reflection, Reflection, Suggestion); the greedy turn-level policy
   (maximise the expected immediate reward: the warm line, then the outcome) plays Reassurance
   first and ends at 0.10 (margin 0.80); uniform corpus agent 0.1859 (exact, `world_table`).
P4G: pressure (Emotion appeal) draws a pledge that states an amount ("ok , ok , i will give $2 .",
   parsed by the turn reward as a donation), Logical appeal after a Credibility appeal a positive
   line, anything else a lukewarm line. The donation is drawn from DONATION_PROBS[level]:
     any Emotion appeal (pressure)                     level 0, mean 0.325
     no Credibility appeal                             level 1, mean 0.55
     Credibility, no Logical appeal after it           level 2, mean 1.025
     Credibility, then a Logical appeal                level 3, mean 1.5625
   Long-run optimum 1.5625 (e.g. Credibility, Logical, ...); greedy turn-level: pressure
   first (a pledge of $5/3 expected vs $0), then $0.325 (margin $1.2375); uniform corpus agent
   0.6197.
   outcome = {"donation", "donation_raw", "level"}.

`optimal_strategy(task, condition)` and `expected_reward(task, condition, strategies)` expose the
dynamics; `expected_reward` is exact given the agent's strategy sequence. Each takes `world`.
"""
from __future__ import annotations

import random
import re
from collections.abc import Mapping, Sequence
import itertools

from engage_jax.data.dialogue import AGENT, USER, Dialogue, Turn

# ---------------------------------------------------------------- ES-like world
EMOTIONS = ("anxiety", "sadness", "anger", "fear")
EMOTION_ADJ = {"anxiety": "anxious", "sadness": "sad", "anger": "angry", "fear": "scared"}
PROBLEMS = ("job crisis", "breakup with partner", "academic pressure", "problems with friends")
PROBLEM_PHRASE = {"job crisis": "my job", "breakup with partner": "my breakup",
                  "academic pressure": "my exams", "problems with friends": "my friends"}
ES_STRATEGIES = ("Affirmation and Reassurance", "Reflection of feelings",
                 "Restatement or Paraphrasing", "Providing Suggestions")
HELPFUL = {"anxiety": "Affirmation and Reassurance", "sadness": "Reflection of feelings",
           "anger": "Reflection of feelings", "fear": "Affirmation and Reassurance"}
P_HELP = 0.6
P_BASE = 0.08
ES_MAX_TURNS = 3

ES_TEMPLATES = {
    "Affirmation and Reassurance": (
        "you are strong and you will get through this .",
        "i am sure things will work out for you .",
        "you are doing your best and that is enough ."),
    "Reflection of feelings": (
        "it sounds like this hurts you deeply .",
        "that must feel very heavy inside .",
        "i can hear how painful this is for you ."),
    "Restatement or Paraphrasing": (
        "so you are saying it seems unfair to you ?",
        "if i understand right , this keeps happening ?",
        "you mean nobody listens to your side ?"),
    "Providing Suggestions": (
        "maybe you could make a small plan for tomorrow .",
        "try talking to someone you trust about it .",
        "a short walk each day could be good for you ."),
}
ES_OPENING = "hi . i feel {adj} because of {phrase} ."
ES_SITUATION = "i feel {adj} about {phrase} ."
ES_ENGAGED = ("thank you , i feel much better now .", "that really helps , thanks .",
              "you have been a great help , thank you .")
ES_CONTINUE = ("i still feel {adj} about it .", "it is still hard for me .",
               "i do not know , it is not easy .")
ES_GOODBYE = ("ok , i have to go now . bye .", "fine , i will go now . bye .")

# --------------------------------------------------------------- P4G-like world
MOTIVATIONS = ("numbers", "feelings", "trust", "people")
AGE_GROUPS = ("young", "middle aged", "senior")
HOBBIES = ("reading", "sports", "music")
P4G_STRATEGIES = ("Logical appeal", "Emotion appeal", "Credibility appeal", "Personal story")
EFFECTIVE = {"numbers": "Logical appeal", "feelings": "Emotion appeal", "trust": "Logical appeal",
             "people": "Emotion appeal"}
P4G_STRATEGY_TURNS = 3
GREETING_STRATEGY = "Greeting"
P4G_GREETING = "hi ! have you heard of save the children ?"
P4G_TEMPLATES = {
    "Logical appeal": (
        "one dollar buys a full meal for a child .",
        "every dollar goes straight to food and school costs .",
        "two dollars pay for a week of clean water ."),
    "Emotion appeal": (
        "imagine a hungry child waiting alone tonight .",
        "these kids are scared and cold without help .",
        "think how sad a child feels with no food ."),
    "Credibility appeal": (
        "the charity has worked for over a hundred years .",
        "independent reviewers rate this charity very highly .",
        "their reports are audited and public every year ."),
    "Personal story": (
        "last year i gave a little and met a girl it fed .",
        "my friend grew up poor and a charity like this saved her .",
        "my sister volunteers there and tells me great stories ."),
}
P4G_REVEAL = {
    "numbers": "maybe . i like to see the numbers first .",
    "feelings": "maybe . i care a lot about how people feel .",
    "trust": "maybe . but i do not trust charities easily .",
    "people": "maybe . i like hearing what other people did .",
}
P4G_POSITIVE = ("wow , that is a good point .", "that really moves me .", "ok , i like that .")
P4G_LUKEWARM = ("hmm , i am not sure about that .", "i guess so .", "ok , go on .")
P4G_CLOSING = "thanks for telling me about it ."
DONATION_VALUES = (0.0, 0.25, 0.5, 1.0, 2.0)
DONATION_PROBS = {
    0: (0.50, 0.20, 0.15, 0.10, 0.05),
    1: (0.30, 0.20, 0.20, 0.20, 0.10),
    2: (0.10, 0.10, 0.20, 0.30, 0.30),
    3: (0.00, 0.05, 0.10, 0.20, 0.65),
}


def donation_mean(k: int) -> float:
  """Mean donation after k effective persuasion turns (k clipped to 0..3)."""
  probs = DONATION_PROBS[max(0, min(int(k), P4G_STRATEGY_TURNS))]
  return float(sum(p * v for p, v in zip(probs, DONATION_VALUES)))


# ------------------------------------------------ delayed-effect worlds (issue 28)
WORLDS = ("default", "delayed")
DELAYED_TURNS = 3
ES_PLEASER = "Affirmation and Reassurance"     # warm now, closes the path
ES_RAPPORT = "Reflection of feelings"          # lukewarm now, needed before a suggestion
ES_PLAN = "Providing Suggestions"
ES_WARM = ("oh , that helps , thank you .", "it helps to hear that , thanks .", "that is kind , it helps .")
ES_DELAYED_BETTER = ("thank you , i feel much better now .", "i feel better now , thank you .",
                     "that was it , i feel a lot better .")
ES_DELAYED_P_CLOSED = 0.10
ES_DELAYED_P_NO_PLAN = 0.25
ES_DELAYED_P_PLAN = (0.10, 0.80, 0.90)          # first suggestion after 0 / 1 / 2+ reflections
P4G_PRESSURE = "Emotion appeal"                # a pledge now, lowers the donation
P4G_TRUST = "Credibility appeal"               # lukewarm now, raises it with a later Logical appeal
P4G_FOLLOWUP = "Logical appeal"
P4G_PLEDGE = ("ok , ok , i will give $2 .", "you got me , i would give $1 right now .",
              "fine , put me down for $2 .")
P4G_PLEDGE_MEAN = 5.0 / 3.0                    # the amounts the pledges state, averaged


def es_delayed_p(strategies: Sequence[str]) -> float:
  """P("i feel better" at the end) of the delayed ES world for the agent's strategies in order."""
  strategies = list(strategies)
  if ES_PLEASER in strategies:
    return ES_DELAYED_P_CLOSED
  if ES_PLAN not in strategies:
    return ES_DELAYED_P_NO_PLAN
  r = strategies[:strategies.index(ES_PLAN)].count(ES_RAPPORT)
  return ES_DELAYED_P_PLAN[min(r, len(ES_DELAYED_P_PLAN) - 1)]


def p4g_delayed_level(strategies: Sequence[str]) -> int:
  """Donation level (DONATION_PROBS key) of the delayed P4G world for the persuasion strategies."""
  strategies = list(strategies)
  if P4G_PRESSURE in strategies:
    return 0
  if P4G_TRUST not in strategies:
    return 1
  return 3 if P4G_FOLLOWUP in strategies[strategies.index(P4G_TRUST) + 1:] else 2


def _delayed_final(task: str, strategies: Sequence[str]) -> float:
  if task == "es":
    return es_delayed_p(strategies)
  return donation_mean(p4g_delayed_level(strategies))


def delayed_reply_pool(task: str, played: Sequence[str]) -> tuple[str, ...]:
  """The user's reply lines to the last of `played` (not the last turn of the chat; ES: the adjective
  is still to be filled in)."""
  s = played[-1]
  if task == "es":
    return ES_WARM if s == ES_PLEASER else ES_CONTINUE
  if s == P4G_PRESSURE:
    return P4G_PLEDGE
  if s == P4G_FOLLOWUP and P4G_TRUST in played[:-1]:
    return P4G_POSITIVE
  return P4G_LUKEWARM


def immediate_reward(task: str, played: Sequence[str], n_turns: int = DELAYED_TURNS) -> float:
  """Expected immediate reward of the delayed world's reply to the last of `played`, as the
  search's turn reward scores it: before the last turn ES 1 for the warm (regex-matching) line,
  P4G the pledged amount (0 for lines without one); at the last turn the chat's expected outcome."""
  if len(played) >= n_turns:
    return _delayed_final(task, played)
  if task == "es":
    return 1.0 if played[-1] == ES_PLEASER else 0.0
  return P4G_PLEDGE_MEAN if played[-1] == P4G_PRESSURE else 0.0


def world_table(task: str, world: str = "delayed", n_turns: int = DELAYED_TURNS) -> dict:
  """Exact enumeration of the world's strategy sequences: {"optimum", "optimal_plans", "greedy",
  "greedy_plan", "uniform", "margin"}. optimum: max expected reward over all sequences; greedy:
  the final expected reward of the policy that maximises each turn's expected immediate reward
  (`immediate_reward`; ties to the first strategy in order); uniform: the corpus agent's mean."""
  names, _, _ = _world(task)
  cond = _sample_condition(task, random.Random(0))
  seqs = list(itertools.product(names, repeat=n_turns))
  vals = [expected_reward(task, cond, q, world) for q in seqs]
  best = max(vals)
  greedy: list[str] = []
  for _ in range(n_turns):
    if world == "delayed":
      greedy.append(max(names, key=lambda s: immediate_reward(task, greedy + [s], n_turns)))
    else:
      greedy.append(optimal_strategy(task, cond))
  g = expected_reward(task, cond, greedy, world)
  return {"optimum": best, "optimal_plans": [list(q) for q, v in zip(seqs, vals) if v == best],
          "greedy": g, "greedy_plan": greedy, "uniform": sum(vals) / len(vals), "margin": best - g}


# ----------------------------------------------------------------- public API
_TEMPLATE_TO_STRATEGY = {" ".join(t.split()): s
                         for table in (ES_TEMPLATES, P4G_TEMPLATES)
                         for s, texts in table.items() for t in texts}
_TEMPLATE_TO_STRATEGY[P4G_GREETING] = GREETING_STRATEGY


def _words(text: str) -> set[str]:
  return set(re.findall(r"[a-z']+", text.lower()))


def _distinctive(table: Mapping[str, Sequence[str]]) -> dict[str, set[str]]:
  words = {s: set().union(*(_words(t) for t in texts)) for s, texts in table.items()}
  return {s: w - set().union(*(v for o, v in words.items() if o != s)) for s, w in words.items()}


_DISTINCTIVE = {"es": _distinctive(ES_TEMPLATES), "p4g": _distinctive(P4G_TEMPLATES)}


def strategy_of(text: str, task: str | None = None) -> str | None:
  """Strategy of an agent text: exact template match, else the strategy whose distinctive words
  (words used by no other strategy of the task) overlap the text most; None if none or a tie.
  task None: exact matches of both worlds, then distinctive words of both."""
  key = " ".join(text.split()).lower()
  if key in _TEMPLATE_TO_STRATEGY:
    return _TEMPLATE_TO_STRATEGY[key]
  words = _words(text)
  tasks = (task,) if task else ("es", "p4g")
  scores = [(len(words & dw), s) for t in tasks for s, dw in _DISTINCTIVE[t].items()]
  scores.sort(reverse=True)
  if not scores or scores[0][0] == 0 or (len(scores) > 1 and scores[1][0] == scores[0][0]):
    return None
  return scores[0][1]


def strategies(task: str) -> tuple[str, ...]:
  """The agent strategies of the task's world."""
  return _world(task)[0]


def _world(task: str):
  if task == "es":
    return ES_STRATEGIES, HELPFUL, "emotion_type"
  if task == "p4g":
    return P4G_STRATEGIES, EFFECTIVE, "motivation"
  raise ValueError(f"unknown sandbox task {task!r}; expected 'es' or 'p4g'")


def check_world(world: str) -> str:
  """`world` if it is one of WORLDS, else a ValueError naming them."""
  if world not in WORLDS:
    raise ValueError(f"unknown sandbox world {world!r}; expected one of {WORLDS}")
  return world


def optimal_strategy(task: str, condition: Mapping[str, str], world: str = "default") -> str:
  """The helpful (ES) / effective (P4G) strategy for the condition; delayed worlds: the first move
  of the long-run optimal plan (Reflection of feelings / Credibility appeal)."""
  _, table, key = _world(task)
  if condition.get(key) not in table:
    raise ValueError(f"sandbox {task}: condition field {key!r} must be one of {tuple(table)}, "
                     f"got {condition.get(key)!r}")
  if check_world(world) == "delayed":
    return ES_RAPPORT if task == "es" else P4G_TRUST
  return table[condition[key]]


def expected_reward(task: str, condition: Mapping[str, str], strategies: Sequence[str],
                    world: str = "default") -> float:
  """Exact expected reward of a conversation whose agent uses `strategies` in order.

  ES: P(engaged) = 1 - prod(1 - p_t) over the first ES_MAX_TURNS strategies (p_t = P_HELP if
  helpful else P_BASE; a chat that ends early stops using later strategies, which does not change
  this probability). P4G: mean donation given k = number of effective persuasion turns among the
  first P4G_STRATEGY_TURNS non-greeting strategies. world "delayed": `es_delayed_p` /
  donation_mean(`p4g_delayed_level`) of the first DELAYED_TURNS (non-greeting) strategies.
  """
  best = optimal_strategy(task, condition, world)
  if world == "delayed":
    return _delayed_final(task, [s for s in strategies if s != GREETING_STRATEGY][:DELAYED_TURNS])
  if task == "es":
    miss = 1.0
    for s in list(strategies)[:ES_MAX_TURNS]:
      miss *= 1.0 - (P_HELP if s == best else P_BASE)
    return 1.0 - miss
  persuasion = [s for s in strategies if s != GREETING_STRATEGY][:P4G_STRATEGY_TURNS]
  return donation_mean(sum(s == best for s in persuasion))


def optimal_reward(task: str, world: str = "default") -> float:
  """Expected reward of the always-optimal policy (delayed worlds: of the best plan)."""
  if check_world(world) == "delayed":
    _world(task)
    return ES_DELAYED_P_PLAN[-1] if task == "es" else donation_mean(P4G_STRATEGY_TURNS)
  if task == "es":
    return 1.0 - (1.0 - P_HELP) ** ES_MAX_TURNS
  _world(task)
  return donation_mean(P4G_STRATEGY_TURNS)


def random_conditions(task: str, n: int, seed: int) -> list[dict[str, str]]:
  """n conditions drawn uniformly (seeded), e.g. held-out evaluation roots."""
  rng = random.Random(f"cond-{task}-{seed}")
  return [_sample_condition(task, rng) for _ in range(n)]


def _sample_condition(task: str, rng: random.Random) -> dict[str, str]:
  if task == "es":
    emo, prob = rng.choice(EMOTIONS), rng.choice(PROBLEMS)
    return {"emotion_type": emo, "problem_type": prob,
            "situation": ES_SITUATION.format(adj=EMOTION_ADJ[emo], phrase=PROBLEM_PHRASE[prob])}
  _world(task)
  return {"motivation": rng.choice(MOTIVATIONS), "age_group": rng.choice(AGE_GROUPS),
          "hobby": rng.choice(HOBBIES)}


def opening_turns(task: str, condition: Mapping[str, str]) -> list[Turn]:
  """Deterministic conversation start for a condition: ES the user's opening turn; P4G the agent's
  greeting and the user's revealing reply (search / evaluation roots)."""
  if task == "es":
    return [Turn(USER, ES_OPENING.format(adj=EMOTION_ADJ[condition["emotion_type"]],
                                         phrase=PROBLEM_PHRASE[condition["problem_type"]]))]
  optimal_strategy(task, condition)
  return [Turn(AGENT, P4G_GREETING, GREETING_STRATEGY), Turn(USER, P4G_REVEAL[condition["motivation"]])]


def _pick_strategy(task: str, condition, rng: random.Random, p_optimal: float) -> str:
  if p_optimal > 0 and rng.random() < p_optimal:
    return optimal_strategy(task, condition)
  return rng.choice(strategies(task))


def _es_dialogue(i: int, seed: int, rng: random.Random, p_optimal: float, max_turns: int,
                 p_help: float, p_base: float) -> Dialogue:
  cond = _sample_condition("es", rng)
  adj = EMOTION_ADJ[cond["emotion_type"]]
  best = HELPFUL[cond["emotion_type"]]
  turns = opening_turns("es", cond)
  engaged = False
  for t in range(max_turns):
    s = _pick_strategy("es", cond, rng, p_optimal)
    turns.append(Turn(AGENT, rng.choice(ES_TEMPLATES[s]), s))
    if rng.random() < (p_help if s == best else p_base):
      turns.append(Turn(USER, rng.choice(ES_ENGAGED)))
      engaged = True
      break
    if t == max_turns - 1:
      turns.append(Turn(USER, rng.choice(ES_GOODBYE)))
    else:
      turns.append(Turn(USER, rng.choice(ES_CONTINUE).format(adj=adj)))
  return Dialogue(id=f"sandbox-es-{seed}-{i}", task="es", turns=turns, condition=cond,
                  outcome={"engaged": engaged})


def _p4g_dialogue(i: int, seed: int, rng: random.Random, p_optimal: float, n_turns: int
                  ) -> Dialogue:
  cond = _sample_condition("p4g", rng)
  best = EFFECTIVE[cond["motivation"]]
  turns = opening_turns("p4g", cond)
  k = 0
  for _ in range(n_turns):
    s = _pick_strategy("p4g", cond, rng, p_optimal)
    turns.append(Turn(AGENT, rng.choice(P4G_TEMPLATES[s]), s))
    k += s == best
    turns.append(Turn(USER, rng.choice(P4G_POSITIVE if s == best else P4G_LUKEWARM)))
  turns[-1] = Turn(USER, f"{turns[-1].text} {P4G_CLOSING}")
  probs = DONATION_PROBS[min(k, P4G_STRATEGY_TURNS)]
  donation = rng.choices(DONATION_VALUES, weights=probs)[0]
  return Dialogue(id=f"sandbox-p4g-{seed}-{i}", task="p4g", turns=turns, condition=cond,
                  outcome={"donation": donation, "donation_raw": donation, "num_effective": k})


def generate(task: str, n: int, seed: int, *, p_optimal: float = 0.0,
             max_turns: int | None = None, p_help: float = P_HELP, p_base: float = P_BASE,
             world: str = "default") -> list[Dialogue]:
  """n seeded sandbox dialogues of `task` ("es" | "p4g"); same seed → identical output.

  p_optimal: probability that the corpus agent plays the optimal strategy on a turn (else
  uniform). max_turns: ES agent-turn cap (default ES_MAX_TURNS) / P4G persuasion turns (default
  P4G_STRATEGY_TURNS). p_help / p_base: ES engagement probabilities (documented defaults).
  world "delayed": the delayed-effect world (module doc), uniform corpus agent, DELAYED_TURNS
  turns (max_turns overrides; p_optimal, p_help, p_base do not apply).
  """
  _world(task)
  if n < 0:
    raise ValueError(f"sandbox.generate: n must be >= 0, got {n}")
  if check_world(world) == "delayed":
    rng = random.Random(f"sandbox-{task}-delayed-{seed}")
    cap = DELAYED_TURNS if max_turns is None else max_turns
    return [_delayed_dialogue(task, i, seed, rng, cap) for i in range(n)]
  rng = random.Random(f"sandbox-{task}-{seed}")
  if task == "es":
    cap = ES_MAX_TURNS if max_turns is None else max_turns
    return [_es_dialogue(i, seed, rng, p_optimal, cap, p_help, p_base) for i in range(n)]
  cap = P4G_STRATEGY_TURNS if max_turns is None else max_turns
  return [_p4g_dialogue(i, seed, rng, p_optimal, cap) for i in range(n)]


def _delayed_dialogue(task: str, i: int, seed: int, rng: random.Random, n_turns: int) -> Dialogue:
  cond = _sample_condition(task, rng)
  turns = opening_turns(task, cond)
  played: list[str] = []
  for t in range(n_turns):
    s = rng.choice(strategies(task))
    played.append(s)
    turns.append(Turn(AGENT, rng.choice((ES_TEMPLATES if task == "es" else P4G_TEMPLATES)[s]), s))
    if task == "p4g" or t < n_turns - 1:
      reply = rng.choice(delayed_reply_pool(task, played))
      turns.append(Turn(USER, reply.format(adj=EMOTION_ADJ[cond["emotion_type"]]) if task == "es" else reply))
  if task == "es":
    engaged = rng.random() < es_delayed_p(played)
    turns.append(Turn(USER, rng.choice(ES_DELAYED_BETTER if engaged else ES_GOODBYE)))
    return Dialogue(id=f"sandbox-es-delayed-{seed}-{i}", task="es", turns=turns, condition=cond,
                    outcome={"engaged": engaged})
  turns[-1] = Turn(USER, f"{turns[-1].text} {P4G_CLOSING}")
  level = p4g_delayed_level(played)
  donation = rng.choices(DONATION_VALUES, weights=DONATION_PROBS[level])[0]
  return Dialogue(id=f"sandbox-p4g-delayed-{seed}-{i}", task="p4g", turns=turns, condition=cond,
                  outcome={"donation": donation, "donation_raw": donation, "level": level})


def all_texts(task: str | None = None, world: str = "default") -> list[str]:
  """Every template text of the world(s) (e.g. to train a tokenizer that covers them)."""
  out: list[str] = []
  if check_world(world) == "delayed":
    out += list(ES_WARM + ES_DELAYED_BETTER) if task in (None, "es") else []
    out += list(P4G_PLEDGE) if task in (None, "p4g") else []
  if task in (None, "es"):
    for texts in ES_TEMPLATES.values():
      out.extend(texts)
    for emo in EMOTIONS:
      adj = EMOTION_ADJ[emo]
      for prob in PROBLEMS:
        out.append(ES_OPENING.format(adj=adj, phrase=PROBLEM_PHRASE[prob]))
        out.append(ES_SITUATION.format(adj=adj, phrase=PROBLEM_PHRASE[prob]))
      out.extend(t.format(adj=adj) for t in ES_CONTINUE)
    out.extend(ES_ENGAGED + ES_GOODBYE)
  if task in (None, "p4g"):
    for texts in P4G_TEMPLATES.values():
      out.extend(texts)
    out.append(P4G_GREETING)
    out.extend(P4G_REVEAL.values())
    out.extend(P4G_POSITIVE + P4G_LUKEWARM + (P4G_CLOSING,))
  return out
