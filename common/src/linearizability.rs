//! Checks that a recorded history of key-value operations is linearizable (Herlihy & Wing):
//! that every operation can be placed at one instant between its invocation and its
//! completion so that the results match a single register per key.
//!
//! Used by the multi-raft simulation and the end-to-end tests to judge client histories.
//!
//! - Keys are checked independently: linearizability is compositional (Herlihy & Wing, §3.3).
//! - The search is Wing & Gong's, with Lowe's just-in-time linearization and Porcupine's
//!   memoization of (operations linearized, register state).
//! - An operation whose outcome is unknown (timed out, connection lost, node crashed) may
//!   take effect at any time after its invocation, or never: it is treated as completing at
//!   the end of time, with any result.
//! - Invocation and completion at the same instant count as concurrent, so the checker never
//!   reports a violation that depends on how ties are broken.
//! - The search is bounded by `max_states_per_key`; past it the verdict is `Inconclusive`,
//!   never a guess.

use std::collections::{BTreeMap, HashSet};

/// Logical or wall time, in any unit, as long as it is the same for every event.
pub type Time = u64;

/// What a client asked for.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Operation {
    Get,
    Put(Vec<u8>),
    Delete,
    /// Set to `new` if the current value is `expected` (`None`: absent / delete).
    CompareAndSwap {
        expected: Option<Vec<u8>>,
        new: Option<Vec<u8>>,
    },
}

/// What the client was told.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// A put or delete succeeded.
    Done,
    /// A get returned this value (`None`: absent).
    Read(Option<Vec<u8>>),
    /// A compare-and-swap did (true) or did not (false) swap.
    Swapped(bool),
    /// No answer: the operation may or may not have taken effect, at any later time.
    Unknown,
}

/// One client operation with its invocation and completion times.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Event {
    pub client: u64,
    pub key: Vec<u8>,
    pub operation: Operation,
    pub outcome: Outcome,
    pub invoked_at: Time,
    /// When the outcome was received; ignored for `Outcome::Unknown`.
    pub completed_at: Time,
}

/// The answer for a whole history.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    Linearizable,
    /// No order of the operations on `key` explains their results; `events` indexes them in
    /// the history.
    Violation {
        key: Vec<u8>,
        events: Vec<usize>,
    },
    /// The search for `key` passed its state budget without an answer.
    Inconclusive {
        key: Vec<u8>,
        states_explored: usize,
    },
    /// The history itself is inconsistent (see the reason); nothing was checked.
    Malformed {
        event: usize,
        reason: &'static str,
    },
}

/// The register one key is: its value, or absent.
type State = Option<Vec<u8>>;

/// The register's rule: the state after applying `event` to `state`, or `None` if the
/// recorded outcome is impossible from `state`.
fn step(state: &State, event: &Event) -> Option<State> {
    match (&event.operation, &event.outcome) {
        (Operation::Get, Outcome::Read(seen)) => (seen == state).then(|| state.clone()),
        (Operation::Get, _) => Some(state.clone()),
        (Operation::Put(value), _) => Some(Some(value.clone())),
        (Operation::Delete, _) => Some(None),
        (Operation::CompareAndSwap { expected, new }, outcome) => {
            let matches = expected == state;
            match outcome {
                Outcome::Swapped(true) => matches.then(|| new.clone()),
                Outcome::Swapped(false) => (!matches).then(|| state.clone()),
                // Had it happened, it swapped exactly when the value matched.
                _ => Some(if matches { new.clone() } else { state.clone() }),
            }
        }
    }
}

fn check_event(event: &Event) -> Result<(), &'static str> {
    let fits = matches!(
        (&event.operation, &event.outcome),
        (_, Outcome::Unknown)
            | (Operation::Get, Outcome::Read(_))
            | (Operation::Put(_) | Operation::Delete, Outcome::Done)
            | (Operation::CompareAndSwap { .. }, Outcome::Swapped(_))
    );
    if !fits {
        return Err("the outcome does not fit the operation");
    }
    if event.outcome != Outcome::Unknown && event.completed_at < event.invoked_at {
        return Err("completed before it was invoked");
    }
    Ok(())
}

/// Checks a whole history, key by key, with at most `max_states_per_key` memoized search
/// states per key. Keys are checked in order; the first that is not linearizable decides.
pub fn check(history: &[Event], max_states_per_key: usize) -> Verdict {
    let mut by_key: BTreeMap<&[u8], Vec<usize>> = BTreeMap::new();
    for (index, event) in history.iter().enumerate() {
        if let Err(reason) = check_event(event) {
            return Verdict::Malformed {
                event: index,
                reason,
            };
        }
        by_key.entry(event.key.as_slice()).or_default().push(index);
    }
    for (key, indexes) in by_key {
        let events: Vec<&Event> = indexes.iter().map(|&i| &history[i]).collect();
        match search(&events, max_states_per_key) {
            Search::Linearizable => {}
            Search::Violation => {
                return Verdict::Violation {
                    key: key.to_vec(),
                    events: indexes,
                };
            }
            Search::OutOfBudget(states_explored) => {
                return Verdict::Inconclusive {
                    key: key.to_vec(),
                    states_explored,
                };
            }
        }
    }
    Verdict::Linearizable
}

enum Search {
    Linearizable,
    Violation,
    OutOfBudget(usize),
}

/// Call and return points of every operation, in time order, as a doubly linked list that
/// operations are lifted out of as they are linearized.
struct Timeline {
    /// Per node: the operation, and whether this is its call (else its return).
    nodes: Vec<(usize, bool)>,
    /// Per operation: its call node and return node.
    call_of: Vec<usize>,
    return_of: Vec<usize>,
    next: Vec<usize>,
    previous: Vec<usize>,
}

/// Index of the list's head sentinel; `usize::MAX` ends the list.
const HEAD: usize = 0;
const END: usize = usize::MAX;

impl Timeline {
    fn new(events: &[&Event]) -> Self {
        let completion = |event: &Event| match event.outcome {
            Outcome::Unknown => Time::MAX,
            _ => event.completed_at,
        };
        // (time, calls before returns at the same time, operation, is call)
        let mut points: Vec<(Time, u8, usize, bool)> = Vec::with_capacity(2 * events.len());
        for (op, event) in events.iter().enumerate() {
            points.push((event.invoked_at, 0, op, true));
            points.push((completion(event), 1, op, false));
        }
        points.sort_unstable();
        let mut nodes = vec![(usize::MAX, false)]; // the head sentinel
        let (mut call_of, mut return_of) = (vec![0; events.len()], vec![0; events.len()]);
        for (_, _, op, is_call) in points {
            let node = nodes.len();
            nodes.push((op, is_call));
            if is_call {
                call_of[op] = node;
            } else {
                return_of[op] = node;
            }
        }
        let count = nodes.len();
        let next = (0..count)
            .map(|i| if i + 1 < count { i + 1 } else { END })
            .collect();
        let previous = (0..count).map(|i| i.wrapping_sub(1)).collect();
        Timeline {
            nodes,
            call_of,
            return_of,
            next,
            previous,
        }
    }

    fn unlink(&mut self, node: usize) {
        let (previous, next) = (self.previous[node], self.next[node]);
        self.next[previous] = next;
        if next != END {
            self.previous[next] = previous;
        }
    }

    /// Re-inserts a node removed by `unlink`; nodes must be relinked in reverse order.
    fn relink(&mut self, node: usize) {
        let (previous, next) = (self.previous[node], self.next[node]);
        self.next[previous] = node;
        if next != END {
            self.previous[next] = node;
        }
    }

    fn lift(&mut self, op: usize) {
        self.unlink(self.call_of[op]);
        self.unlink(self.return_of[op]);
    }

    fn unlift(&mut self, op: usize) {
        self.relink(self.return_of[op]);
        self.relink(self.call_of[op]);
    }
}

fn search(events: &[&Event], max_states: usize) -> Search {
    let mut timeline = Timeline::new(events);
    let mut linearized = vec![0u64; events.len().div_ceil(64)];
    let mut seen: HashSet<(Vec<u64>, State)> = HashSet::new();
    let mut state: State = None;
    // Operations linearized so far, with the state before each.
    let mut stack: Vec<(usize, State)> = Vec::new();
    let mut node = timeline.next[HEAD];
    while timeline.next[HEAD] != END {
        if node == END {
            return Search::Violation; // unreachable: a pending call is followed by its return
        }
        let (op, is_call) = timeline.nodes[node];
        if is_call {
            if let Some(after) = step(&state, events[op]) {
                linearized[op / 64] |= 1 << (op % 64);
                if seen.insert((linearized.clone(), after.clone())) {
                    if seen.len() > max_states {
                        return Search::OutOfBudget(seen.len());
                    }
                    stack.push((op, std::mem::replace(&mut state, after)));
                    timeline.lift(op);
                    node = timeline.next[HEAD];
                    continue;
                }
                linearized[op / 64] &= !(1 << (op % 64));
            }
            node = timeline.next[node];
        } else {
            // An operation completed before any order could place it: undo the last choice.
            let Some((last, before)) = stack.pop() else {
                return Search::Violation;
            };
            state = before;
            linearized[last / 64] &= !(1 << (last % 64));
            timeline.unlift(last);
            node = timeline.next[timeline.call_of[last]];
        }
    }
    Search::Linearizable
}

#[cfg(test)]
mod tests {
    use super::*;

    const BUDGET: usize = 100_000;

    fn event(
        client: u64,
        operation: Operation,
        outcome: Outcome,
        invoked_at: Time,
        completed_at: Time,
    ) -> Event {
        Event {
            client,
            key: b"k".to_vec(),
            operation,
            outcome,
            invoked_at,
            completed_at,
        }
    }

    fn put(client: u64, value: &[u8], at: (Time, Time)) -> Event {
        event(
            client,
            Operation::Put(value.to_vec()),
            Outcome::Done,
            at.0,
            at.1,
        )
    }

    fn get(client: u64, seen: Option<&[u8]>, at: (Time, Time)) -> Event {
        event(
            client,
            Operation::Get,
            Outcome::Read(seen.map(<[u8]>::to_vec)),
            at.0,
            at.1,
        )
    }

    fn cas(
        client: u64,
        expected: Option<&[u8]>,
        new: &[u8],
        swapped: bool,
        at: (Time, Time),
    ) -> Event {
        let operation = Operation::CompareAndSwap {
            expected: expected.map(<[u8]>::to_vec),
            new: Some(new.to_vec()),
        };
        event(client, operation, Outcome::Swapped(swapped), at.0, at.1)
    }

    fn verdict(history: &[Event]) -> Verdict {
        check(history, BUDGET)
    }

    fn is_violation(history: &[Event]) -> bool {
        matches!(verdict(history), Verdict::Violation { .. })
    }

    #[test]
    fn sequential_history_of_a_register_is_linearizable() {
        let history = [
            put(1, b"a", (0, 1)),
            get(1, Some(b"a"), (2, 3)),
            put(2, b"b", (4, 5)),
            get(3, Some(b"b"), (6, 7)),
        ];
        assert_eq!(verdict(&history), Verdict::Linearizable);
    }

    #[test]
    fn a_read_after_a_completed_write_that_misses_it_is_a_violation() {
        // The stale read: the write finished before the read began.
        let history = [put(1, b"a", (0, 1)), get(2, None, (2, 3))];
        assert_eq!(
            verdict(&history),
            Verdict::Violation {
                key: b"k".to_vec(),
                events: vec![0, 1]
            }
        );
    }

    #[test]
    fn a_read_concurrent_with_a_write_may_see_either_value() {
        for seen in [None, Some(b"a".as_slice())] {
            let history = [put(1, b"a", (0, 10)), get(2, seen, (5, 6))];
            assert_eq!(verdict(&history), Verdict::Linearizable, "{seen:?}");
        }
    }

    #[test]
    fn new_then_old_across_two_sequential_reads_is_a_violation() {
        // Both reads overlap the write, but once one read saw the new value a later read
        // cannot see the old one.
        let history = [
            put(1, b"a", (0, 100)),
            get(2, Some(b"a"), (10, 20)),
            get(3, None, (30, 40)),
        ];
        assert!(is_violation(&history));
        let reordered = [
            put(1, b"a", (0, 100)),
            get(2, None, (10, 20)),
            get(3, Some(b"a"), (30, 40)),
        ];
        assert_eq!(verdict(&reordered), Verdict::Linearizable);
    }

    #[test]
    fn two_swaps_from_the_same_value_cannot_both_succeed() {
        let history = [
            put(1, b"0", (0, 1)),
            cas(2, Some(b"0"), b"x", true, (2, 10)),
            cas(3, Some(b"0"), b"y", true, (3, 11)),
        ];
        assert!(is_violation(&history));
        let one_fails = [
            put(1, b"0", (0, 1)),
            cas(2, Some(b"0"), b"x", true, (2, 10)),
            cas(3, Some(b"0"), b"y", false, (3, 11)),
        ];
        assert_eq!(verdict(&one_fails), Verdict::Linearizable);
    }

    #[test]
    fn a_write_with_unknown_outcome_may_apply_late_or_never() {
        let unknown = event(1, Operation::Put(b"a".to_vec()), Outcome::Unknown, 0, 0);
        // Never applied, applied late: both fine...
        assert_eq!(
            verdict(&[unknown.clone(), get(2, None, (50, 51))]),
            Verdict::Linearizable
        );
        assert_eq!(
            verdict(&[
                unknown.clone(),
                get(2, None, (50, 51)),
                get(2, Some(b"a"), (60, 61))
            ]),
            Verdict::Linearizable
        );
        // ...but once seen, it cannot be unseen.
        assert!(is_violation(&[
            unknown,
            get(2, Some(b"a"), (50, 51)),
            get(2, None, (60, 61))
        ]));
    }

    #[test]
    fn a_value_nobody_wrote_is_a_violation() {
        assert!(is_violation(&[
            put(1, b"a", (0, 1)),
            get(2, Some(b"zz"), (0, 5))
        ]));
    }

    #[test]
    fn keys_are_independent() {
        let mut other = put(1, b"b", (0, 1));
        other.key = b"other".to_vec();
        let history = [put(1, b"a", (0, 1)), other, get(2, Some(b"a"), (2, 3))];
        assert_eq!(verdict(&history), Verdict::Linearizable);
    }

    #[test]
    fn touching_intervals_count_as_concurrent() {
        // The write completes at 5 and the read starts at 5: either order is allowed.
        assert_eq!(
            verdict(&[put(1, b"a", (0, 5)), get(2, None, (5, 6))]),
            Verdict::Linearizable
        );
    }

    #[test]
    fn inconsistent_events_are_refused() {
        let backwards = put(1, b"a", (5, 1));
        assert_eq!(
            verdict(&[backwards]),
            Verdict::Malformed {
                event: 0,
                reason: "completed before it was invoked"
            }
        );
        let wrong_outcome = event(1, Operation::Get, Outcome::Done, 0, 1);
        assert!(matches!(
            verdict(&[wrong_outcome]),
            Verdict::Malformed { event: 0, .. }
        ));
    }

    #[test]
    fn the_search_stops_at_its_budget() {
        // Many concurrent writes and one impossible read: every order must be tried.
        let mut history: Vec<Event> = (0..20).map(|i| put(i, &[i as u8], (0, 100))).collect();
        history.push(get(99, Some(b"none"), (0, 100)));
        assert!(matches!(
            check(&history, 50),
            Verdict::Inconclusive {
                states_explored: 51,
                ..
            }
        ));
    }

    /// A seeded generator for the property test below.
    fn next(state: &mut u64) -> u64 {
        *state ^= *state << 13;
        *state ^= *state >> 7;
        *state ^= *state << 17;
        *state
    }

    /// Property against the obviously correct model: histories produced by a real register
    /// with random overlapping intervals (each operation takes effect at an instant inside its
    /// interval) are linearizable; changing one read's result to a value never written makes
    /// them not.
    #[test]
    fn histories_from_a_real_register_pass_and_a_corrupted_read_fails() {
        let mut seed = 0x2545_f491_4f6c_dd1d_u64;
        for round in 0..300 {
            let mut register: State = None;
            let mut history = Vec::new();
            for instant in 0..12u64 {
                let at = 10 * instant;
                let invoked_at = at - next(&mut seed) % 10.min(at + 1);
                let completed_at = at + next(&mut seed) % 25;
                let client = next(&mut seed) % 4;
                let choice = next(&mut seed) % 4;
                let value = vec![(next(&mut seed) % 3) as u8];
                let (operation, outcome) = match choice {
                    0 => (Operation::Get, Outcome::Read(register.clone())),
                    1 => (Operation::Put(value.clone()), Outcome::Done),
                    2 => (Operation::Delete, Outcome::Done),
                    _ => {
                        let expected = register
                            .clone()
                            .filter(|_| next(&mut seed).is_multiple_of(2));
                        let swapped = expected == register;
                        (
                            Operation::CompareAndSwap {
                                expected,
                                new: Some(value.clone()),
                            },
                            Outcome::Swapped(swapped),
                        )
                    }
                };
                if let Some(after) = step(
                    &register,
                    &Event {
                        client,
                        key: b"k".to_vec(),
                        operation: operation.clone(),
                        outcome: outcome.clone(),
                        invoked_at,
                        completed_at,
                    },
                ) {
                    register = after;
                }
                history.push(event(client, operation, outcome, invoked_at, completed_at));
            }
            assert_eq!(
                verdict(&history),
                Verdict::Linearizable,
                "round {round}: {history:?}"
            );
            if let Some(read) = history.iter_mut().find(|e| e.operation == Operation::Get) {
                read.outcome = Outcome::Read(Some(b"never written".to_vec()));
                assert!(is_violation(&history), "round {round}");
            }
        }
    }
}
