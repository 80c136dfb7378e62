//! The simulated network: per-message delay (so messages reorder), drops, duplicates, and
//! directed link cuts for symmetric and asymmetric partitions.

use std::collections::BTreeSet;

use rshard_raft::Message;

use super::rng::SimRng;

/// Fault rates for the network, fixed per run.
#[derive(Clone, Debug)]
pub struct NetworkFaults {
    pub drop_probability: f64,
    pub duplicate_probability: f64,
    /// Each message is delivered between 0 and this many ticks after it is sent.
    pub max_delay_ticks: u64,
}

impl NetworkFaults {
    pub fn none() -> Self {
        NetworkFaults {
            drop_probability: 0.0,
            duplicate_probability: 0.0,
            max_delay_ticks: 1,
        }
    }
}

#[derive(Debug)]
pub struct Network {
    pub faults: NetworkFaults,
    /// (deliver at tick, sequence for a stable order, message).
    in_flight: Vec<(u64, u64, Message)>,
    sequence: u64,
    /// Directed links that currently lose everything.
    pub cut: BTreeSet<(u64, u64)>,
    pub sent: u64,
    pub dropped: u64,
}

impl Network {
    pub fn new(faults: NetworkFaults) -> Self {
        Network {
            faults,
            in_flight: Vec::new(),
            sequence: 0,
            cut: BTreeSet::new(),
            sent: 0,
            dropped: 0,
        }
    }

    pub fn send(&mut self, now: u64, message: Message, rng: &mut SimRng) {
        self.sent += 1;
        if rng.chance(self.faults.drop_probability) {
            self.dropped += 1;
            return;
        }
        let copies = if rng.chance(self.faults.duplicate_probability) {
            2
        } else {
            1
        };
        for _ in 0..copies {
            let at = now + rng.below(self.faults.max_delay_ticks + 1);
            self.sequence += 1;
            self.in_flight.push((at, self.sequence, message.clone()));
        }
    }

    /// Removes and returns the messages due by `now`, shuffled, minus those on cut links.
    pub fn due(&mut self, now: u64, rng: &mut SimRng) -> Vec<Message> {
        let (mut due, pending): (Vec<_>, Vec<_>) = std::mem::take(&mut self.in_flight)
            .into_iter()
            .partition(|(at, _, _)| *at <= now);
        self.in_flight = pending;
        due.sort_by_key(|(at, sequence, _)| (*at, *sequence));
        let mut messages: Vec<Message> = due
            .into_iter()
            .map(|(_, _, m)| m)
            .filter(|m| !self.cut.contains(&(m.from, m.to)))
            .collect();
        rng.shuffle(&mut messages);
        messages
    }

    /// Removes and returns one message for `to` that is due by `now` and not on a cut link.
    pub fn take_due_for(&mut self, to: u64, now: u64) -> Option<Message> {
        let position = self.in_flight.iter().position(|(at, _, m)| {
            *at <= now && m.to == to && !self.cut.contains(&(m.from, m.to))
        })?;
        Some(self.in_flight.remove(position).2)
    }

    pub fn heal(&mut self) {
        self.cut.clear();
    }

    pub fn in_flight_count(&self) -> usize {
        self.in_flight.len()
    }
}
