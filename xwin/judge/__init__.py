"""Judging with a model behind an OpenAI-compatible endpoint: the eval stage's benchmarks
(MT-bench, AlpacaEval-style win rates) and the annotate stage's Xwin-Pair labels.

- config.py    JudgeConfig: endpoint, concurrency, retries, cache, local vLLM server settings;
               JudgeGateConfig: the calibration set and thresholds of eval's judge gate
- session.py   open_judge(cfg, ...): a JudgeClient on an external endpoint or a local server
- client.py    JudgeClient: bounded concurrency, tenacity retries, persistent response cache
- server.py    VllmServer: a local vLLM OpenAI-compatible server for one stage's lifetime
- cache.py     ResponseCache: SQLite, keyed by sha256(judge identity, messages, params)
- prompts.py   MT-bench judge prompts (FastChat's), our AlpacaEval-style and context prompts
- verdicts.py  strict parsing of [[rating]] / [[A]] [[B]] [[C]]; position-swap combination
- judging.py   grade(...) and compare_swapped(...): the two moves every benchmark uses
- calibration.py  the judge gate: known-answer comparisons from MT-bench's reference answers,
                 swap agreement, unparseable share; eval reports "judge unreliable" below thresholds
- stats.py     win rates, Wilson and bootstrap intervals, length-controlled win rate; paired
               bootstrap of a score difference, McNemar's exact test
- mtbench.py, alpaca.py   the benchmarks; answers.py: cached answers; report.py: tables, plots
- verifiable.py  IFEval-style verifiable constraints: checks (strict, loose), draws, IFBench_test
"""
