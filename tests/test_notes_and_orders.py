"""Small user-facing promises of the notes and listings: commands to paste, and stable orders.

* A command a note, a console line or ``run_summary.json`` suggests
  (```lipoframe plan FOLDER pixel_size=<Å/px>```, ``lipoframe report FOLDER``,
  ``lipoframe simulate``'s ``next:`` line) gives a folder whose name has a
  space back as one word when pasted into a POSIX shell (``shlex.split``);
  a plain path is left as it is. ``lipoframe evaluate``'s hint for a sweep
  of shards and ``lipoframe merge``'s for a sweep run as printed.
* The hint for a folder whose micrographs are in subfolders is one shell
  word that Hydra reads back as the folder's glob, whatever the folder's name.
* ``lipoframe merge`` of runs made with other settings lists their
  fingerprint groups in the order the runs were given.
* A sweep's start-up note on ``nms.beta`` calls the default the default,
  and says a beta "changes nothing" only when it gives the default's picks.
* ``lipoframe plan RUN pixel_size=X`` refuses a run whose picking stages
  are a plugin's, as it refuses one that picked with lengths in Å.
"""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import pytest
from conftest import TINY_ARGS, tiny_image, write_mrc

from lipoframe.plancmd import PIXEL_SIZE_PLAN_RULE

#: A command in backticks in a note: `lipoframe plan /data/run pixel_size=<Å/px>`.
COMMAND = re.compile(r"`(lipoframe [^`]+)`")


def commands_in(text: str) -> list[list[str]]:
    """Every backticked ``lipoframe ...`` command of ``text``, split as a POSIX shell splits it."""
    return [shlex.split(c) for c in COMMAND.findall(text)]


def test_the_1_A_per_px_note_quotes_an_output_folder_with_a_space(tmp_path, run_cli):
    # The note said `lipoframe plan /tmp/.../my run pixel_size=<Å/px>`: pasted, "run" was another word.
    mic = write_mrc(tmp_path / "mics" / "mic_0.mrc", tiny_image(seed=0)[0], pixel_size=1.0)
    out = tmp_path / "my run"
    code, stdout, _ = run_cli("run", f"input={mic.parent}", f"output={out}", *TINY_ARGS)
    assert code == 0
    notes = json.loads((out / "run_summary.json").read_text())["notes"]
    said = [n for n in notes if "1 Å/px" in n]
    assert said, notes
    for text in (said[0], stdout):
        plans = [c for c in commands_in(text) if c[:2] == ["lipoframe", "plan"]]
        assert plans, text
        assert plans[0][2] == str(out)
        assert plans[0][3] == "pixel_size=<Å/px>"


def test_a_plain_output_folder_is_left_unquoted_in_the_note():
    from lipoframe.config import LipoframeConfig
    from lipoframe.runner import MicrographMeta, placeholder_pixel_size_notes

    metas = {"a": MicrographMeta(name="a", path=Path("/data/a.mrc"), shape=(64, 64), pixel_size=1.0)}
    cfg = LipoframeConfig(units="px")
    plain, spaced = (placeholder_pixel_size_notes(metas, cfg, out_dir=Path(p))[0] for p in ("/data/run1", "/data/run 1"))
    assert "`lipoframe plan /data/run1 pixel_size=<Å/px>`" in plain
    assert commands_in(spaced)[0][2] == "/data/run 1"


def test_a_copied_run_names_the_copy_quoted_in_its_commands_and_plain_in_its_words(tmp_path):
    from lipoframe.runner import RUN_NOTES, picking_named_here

    plain, spaced = "/data/run1", "/data/old run"
    picking = {"out_dir": plain, "notes": [f"picked in {plain}; `lipoframe report {plain}` writes it"],
               RUN_NOTES: [f"`lipoframe plan {shlex.quote(spaced)} pixel_size=<Å/px>` sets it"]}
    copy = tmp_path / "the copy"
    named = picking_named_here(picking, copy)
    assert named["notes"][0].startswith(f"picked in {copy};")
    assert commands_in(named["notes"][0])[0] == ["lipoframe", "report", str(copy)]
    # A folder recorded with a space, moved to one without.
    named = picking_named_here({**picking, "out_dir": spaced}, tmp_path / "plain")
    assert named[RUN_NOTES][0] == f"`lipoframe plan {tmp_path / 'plain'} pixel_size=<Å/px>` sets it"


def test_simulate_next_line_quotes_a_folder_with_a_space(tmp_path, capsys):
    from lipoframe.simulate import main

    out = tmp_path / "my sim"
    assert main([f"output={out}", "preset=mini", "only=empty"]) == 0
    line = next(ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("next:"))
    words = shlex.split(line.split(":", 1)[1].replace("<run>", "RUN"))
    assert f"input={out}" in words
    assert f"reference={out / 'truth.csv'}" in words


FOLDER_NAMES = ["session1", "my session", "Anna's grid", 'the "best" grid', "grid (2), left", "it's a \"test\"",
                "cost $5 ${x}", "back\\slash", "café!", "end\\", "back\\${x}", "two\\\\${x}"]


@pytest.mark.parametrize("name", FOLDER_NAMES)
def test_the_subfolder_hint_is_a_word_bash_and_hydra_read_back_as_the_folders_glob(tmp_path, name):
    """input=<folder> whose micrographs are in subfolders hints input='<folder>/**/*.mrc'. For a folder
    whose name has a single quote the hint was no shell word at all (its quote closed the shell's), and
    Hydra cannot read '(', ',', '$' ... unquoted. The hint, split as bash splits it and parsed by Hydra's
    override grammar (composed as `lipoframe run` composes it), gives the glob, which finds the micrograph."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from omegaconf import OmegaConf

    from lipoframe.merge import compose_config
    from lipoframe.runner import expand_inputs, find_inputs

    folder = tmp_path / name
    mic = folder / "GridSquare_1" / "Data" / "mic_0.mrc"
    mic.parent.mkdir(parents=True)
    mic.write_bytes(b"")  # found, never read
    _, problems = find_inputs([str(folder)], (".mrc",))
    assert len(problems) == 1 and " give " in problems[0], problems
    (word,) = shlex.split(problems[0].rsplit(" give ", 1)[1])
    glob = str(folder / "**" / "*.mrc")
    override = OverridesParser.create().parse_override(word)
    assert override.key_or_group == "input"
    assert OmegaConf.create({"input": override.value()}).input == glob  # as OmegaConf reads it: its ${ escaped
    _, cfg = compose_config([word, *TINY_ARGS])
    assert list(cfg.input) == [glob]
    assert expand_inputs(list(cfg.input), (".mrc",)) == [mic]


def _truth_in(folder: Path) -> Path:
    """The truth of the two tiny micrographs (tiny_mrcs) as a CSV in ``folder``."""
    import pandas as pd
    from conftest import tiny_truth

    folder.mkdir(parents=True, exist_ok=True)
    truth = pd.concat([tiny_truth(i).assign(micrograph=f"mic_{i}") for i in range(2)])
    truth.to_csv(folder / "truth.csv", index=False)
    return folder / "truth.csv"


def test_evaluates_shard_hint_runs_as_printed_for_folders_with_a_space(tiny_shard_sweep, tmp_path, run_cli):
    """`lipoframe evaluate picks=<sweep of shards>` prints `lipoframe merge SWEEP output=<merged> && lipoframe
    evaluate picks=<merged> reference=REF` to run instead; with a space in the sweep's and the reference's
    folder, pasted, each path must come back as one word. The printed commands, split as a shell splits
    them (<merged> filled in), are those words, and run: the merge and then the evaluation succeed."""
    sweep = tiny_shard_sweep  # in "my shards"; read where it is: merge writes elsewhere
    assert " " in sweep.name
    truth = _truth_in(tmp_path / "my refs")
    code, out, err = run_cli("evaluate", f"picks={sweep}", f"reference={truth}")
    assert code == 2 and "its jobs are the shards of one run" in err, (out, err)
    merged = tmp_path / "merged run"
    commands = [shlex.split(c.replace("<merged>", shlex.quote(str(merged))))
                for c in err.split("run: ", 1)[1].strip().split(" && ")]
    assert commands == [["lipoframe", "merge", str(sweep), f"output={merged}"],
                        ["lipoframe", "evaluate", f"picks={merged}", f"reference={truth}"]], err
    code, _, err = run_cli(*commands[0][1:])
    assert code == 0, err
    code, out, err = run_cli(*commands[1][1:])
    assert code == 0 and out, (out, err)


def test_merges_sweep_hint_runs_as_printed_for_a_sweep_folder_with_a_space(tiny_mrcs, tmp_path, run_cli):
    """`lipoframe merge <sweep over nms.max_containment>` refuses and says `lipoframe evaluate picks=SWEEP
    reference=<reference picks>` compares the jobs; with a space in the sweep's folder the command, split
    as a shell splits it (the reference filled in), names it as one word, and runs: one table of 2 jobs."""
    sweep = tmp_path / "my sweep"
    code, _, err = run_cli("run", "-m", f"input={tiny_mrcs[0]}", f"output={sweep}", "nms.max_containment=0.3,0.5",
                           *TINY_ARGS)
    assert code == 0, err
    code, _, err = run_cli("merge", str(sweep), f"output={tmp_path / 'merged'}")
    assert code == 1 and "compared, not merged" in err, err
    truth = _truth_in(tmp_path / "my refs")
    (command,) = [shlex.split(c.replace("<reference picks>", shlex.quote(str(truth)))) for c in COMMAND.findall(err)]
    assert command == ["lipoframe", "evaluate", f"picks={sweep}", f"reference={truth}"], err
    code, out, err = run_cli(*command[1:])
    assert code == 0 and out.startswith(f"sweep {sweep}: 2 jobs against {truth}"), (out, err)


def _shard(folder: str, fingerprint: str):
    from lipoframe.merge import Shard

    manifest = {"micrographs": [{"name": folder, "path": f"/data/{folder}.mrc"}], "shard": {"index": 0, "count": 1},
                "fingerprint": fingerprint}
    return Shard(Path(folder), manifest, [])


def _fingerprint_groups(shards) -> list[str]:
    from lipoframe.merge import MergeError, plan_merge

    with pytest.raises(MergeError, match="different per-micrograph settings") as info:
        plan_merge(shards)
    groups = re.search(r"\(fingerprints (.*)\); merge only", str(info.value)).group(1)
    return groups.split("; ")


def test_merge_lists_the_fingerprint_groups_in_the_order_the_runs_were_given():
    # They were listed by fingerprint (sorted hashes): the first run given could come last.
    shards = [_shard("run_b", "ffff"), _shard("run_a", "0000"), _shard("run_c", "ffff")]
    groups = _fingerprint_groups(shards)
    assert groups == ["ffff: run_b, run_c", "0000: run_a"]
    assert _fingerprint_groups(shards) == groups
    assert _fingerprint_groups(shards[::-1]) == ["ffff: run_c, run_b", "0000: run_a"]
    assert _fingerprint_groups(shards[1:]) == ["0000: run_a", "ffff: run_c"]


def _sweep_notes(*overrides: str) -> list[str]:
    """The notes a sweep prints before its jobs start, job by job (as ``lipoframe run -m`` gathers them)."""
    from lipoframe.app import override_notes, sweep_jobs, validate_overrides

    return [n for job in sweep_jobs(list(overrides)) for n in override_notes(validate_overrides(job), job)]


def test_a_beta_sweep_calls_the_default_the_default_and_not_a_change():
    # `lipoframe run -m nms.beta=0.6,0.8` said "nms.beta=0.8 changes nothing", of the value every run has.
    changed, default = _sweep_notes("nms.beta=0.6,0.8")
    assert changed.startswith("nms.beta=0.6 changes nothing while nms.max_containment=0.4: ")
    assert "gives the picks of the default 0.8" in changed
    assert default.startswith("nms.beta=0.8 is the default; while nms.max_containment=0.4, any nms.beta below 0.98 "
                              "gives the same picks as it")
    assert "changes nothing" not in default


def test_a_beta_below_the_containment_reach_is_not_said_to_give_the_defaults_picks():
    # With nms.max_containment=0.9 the containment test reaches 0.16 radii only: the default 0.8 suppresses more,
    # so a beta of 0.1 "changed nothing" only against another beta below 0.16.
    (note,) = _sweep_notes("nms.beta=0.1", "nms.max_containment=0.9")
    assert "changes nothing" not in note
    assert note.startswith("nms.beta=0.1 gives the same picks as any nms.beta below 0.16 while nms.max_containment=0.9 "
                           "(the default 0.8 also suppresses centres 0.16 to 0.8 radii apart)")


def test_plan_refuses_a_new_pixel_size_for_a_run_picked_by_a_plugins_detector(tmp_path, run_cli, fake_plugin):
    # `lipoframe plan RUN pixel_size=2` of such a run wrote a plan at 2 Å/px of picks that a run at 2 Å/px (resumed)
    # would pick again, and the run's 1 Å/px note sent the user there ("sets it without picking again").
    mic = write_mrc(tmp_path / "mics" / "mic_0.mrc", tiny_image(seed=0)[0], pixel_size=1.0)
    out = tmp_path / "run"
    assert run_cli("run", f"input={mic.parent}", f"output={out}", f"detector={fake_plugin}", *TINY_ARGS)[0] == 0
    (note,) = [n for n in json.loads((out / "run_summary.json").read_text())["notes"] if "1 Å/px" in n]
    assert f"the detector '{fake_plugin}' is a plugin's, which may use it" in note
    assert "lipoframe plan" not in note and "run again with pixel_size=<Å/px>" in note
    plan = (out / "extraction_plan.json").read_bytes()
    code, _, err = run_cli("plan", out, "pixel_size=2")
    assert code == 2
    assert f"cannot change pixel_size here: the detector '{fake_plugin}' is a plugin's" in err
    assert "`lipoframe run ... pixel_size=2`" in err and PIXEL_SIZE_PLAN_RULE in err
    assert (out / "extraction_plan.json").read_bytes() == plan
    # The pixel size it picked at is no change (the stages are not even looked at).
    from lipoframe import plugins
    from lipoframe.plancmd import check_picks_ignore_pixel_size

    registry = plugins.load()[1]
    check_picks_ignore_pixel_size(out, ["mic_0"], None, None, 1.0, choices={"detector": fake_plugin}, registry=registry)


def test_a_picking_stage_no_plugin_provides_now_counts_as_a_plugins():
    from lipoframe import plugins
    from lipoframe.plancmd import _picking_plugin

    registry = plugins.load()[1]
    assert _picking_plugin({"detector": "edge", "nms": "size_aware", "reader": "auto"}, registry) == ""
    assert _picking_plugin({"detector": "gone"}, registry).startswith("the detector 'gone' is no stage of lipoframe's")
