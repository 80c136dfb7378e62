#!/usr/bin/env python3
"""Shows that the Raft simulator can fail: plants known bugs in a scratch copy of the core
and counts the simulation seeds that catch each.

The repository is never modified: the crate is copied into a temporary workspace, one
mutation is applied there, and the simulation runs with RSHARD_SIM_KEEP_GOING=1 so every
failing seed is counted.

    python3 scripts/raft-mutants.py                 # every mutation, 5,000 seeds each
    python3 scripts/raft-mutants.py --seeds 20000 figure8_commit_old_term

A mutation whose pattern no longer matches the source fails loudly rather than testing
nothing.
"""
import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile

# name -> (file under server/raft, exact original text, mutated text, what the bug breaks)
MUTATIONS = {
    "figure8_commit_old_term": (
        "src/log.rs",
        "if index > self.committed && self.match_term(index, term)? {",
        "if index > self.committed && (term > 0 || self.match_term(index, term)?) {",
        "commits an entry of an earlier term by counting replicas (Raft §5.4.2, Figure 8)",
    ),
    "vote_without_up_to_date_check": (
        "src/election.rs",
        "let granted = can_vote && self.log.is_up_to_date(last_index, last_term)?;",
        "let granted = can_vote && (last_index > 0 || self.log.is_up_to_date(last_index, last_term)?);",
        "grants votes without the up-to-date check (§5.4.1)",
    ),
    "vote_answered_before_persisted": (
        "src/raft.rs",
        "if self.role == Role::Leader && self.persisted_term_vote == (self.term, self.vote) {",
        "if matches!(message.kind, MessageKind::VoteResponse { .. })\n"
        "            || (self.role == Role::Leader && self.persisted_term_vote == (self.term, self.vote))\n"
        "        {",
        "answers a vote before the vote is persisted (§5.2, Figure 2 'persistent state')",
    ),
    "read_index_without_quorum_round": (
        "src/read.rs",
        "if only_voter || self.has_lease() {",
        "if only_voter || self.has_lease() || !context.is_empty() {",
        "serves ReadIndex without confirming leadership with a quorum (thesis §6.4)",
    ),
    "lease_kept_across_quiescence": (
        "src/read.rs",
        "        self.lease_first_round = self.heartbeat_round + 1;\n        self.round_ticks.clear();\n",
        "",
        "keeps a lease through quiescence, when the leader's ticks stand still (thesis §6.4.1)",
    ),
}


def workspace_toml(root):
    """The root manifest's workspace sections and test profile, with the raft crate as the
    only member. Sections are found by their header lines, so brackets inside values
    (feature lists) do not confuse it."""
    sections, current = {}, None
    for line in open(os.path.join(root, "Cargo.toml")):
        header = re.match(r"^\[([^\]]+)\]\s*$", line)
        if header:
            current = header.group(1)
            sections[current] = [line]
        elif current:
            sections[current].append(line)
    keep = [name for name in sections if name.startswith("workspace.") or name == "profile.test"]
    return '[workspace]\nmembers = ["raft"]\nresolver = "2"\n\n' + "".join(
        "".join(sections[name]) for name in keep)


def run(root, scratch, name, seeds):
    crate = os.path.join(scratch, "raft")
    shutil.rmtree(crate, ignore_errors=True)
    shutil.copytree(os.path.join(root, "server", "raft"), crate)
    if name != "none":
        path, original, mutated, _ = MUTATIONS[name]
        source = open(os.path.join(crate, path)).read()
        if source.count(original) != 1:
            sys.exit(f"{name}: the original text is not found exactly once in {path}; update the script")
        open(os.path.join(crate, path), "w").write(source.replace(original, mutated))
    env = dict(os.environ, RSHARD_SIM_KEEP_GOING="1", RSHARD_SIM_SEEDS=str(seeds),
               CARGO_TARGET_DIR=os.path.join(scratch, "target"))
    result = subprocess.run(
        ["cargo", "test", "-j2", "-p", "rshard-raft", "--test", "simulation", "--", "--nocapture"],
        cwd=scratch, env=env, capture_output=True, text=True)
    output = result.stdout + result.stderr
    failing = sorted(int(s) for s in re.findall(r"simulation seed (\d+) failed", output))
    if result.returncode != 0 and not failing:
        sys.exit(f"{name}: the simulation did not run:\n{output[-3000:]}")
    first = re.search(r"simulation seed \d+ failed: ([^\n]*)", output)
    return failing, (first.group(1)[:140] if first else "")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, default=5000)
    parser.add_argument("names", nargs="*", default=["none"] + list(MUTATIONS))
    args = parser.parse_args()
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    scratch = tempfile.mkdtemp(prefix="raft-mutants-")
    try:
        open(os.path.join(scratch, "Cargo.toml"), "w").write(workspace_toml(root))
        shutil.copy(os.path.join(root, "Cargo.lock"), scratch)
        for name in args.names:
            failing, first = run(root, scratch, name, args.seeds)
            what = MUTATIONS[name][3] if name in MUTATIONS else "the core as it is"
            shown = ", ".join(map(str, failing[:8])) + (" ..." if len(failing) > 8 else "")
            print(f"{name}: {len(failing)} of {args.seeds} seeds fail [{shown}] -- {what}")
            if first:
                print(f"    first failure: {first}")
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
