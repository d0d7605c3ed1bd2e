//! The persist pipeline: which messages and `on_persisted` marks wait for which WAL commands.
//!
//! Every WAL command the core hands out is counted here, from the first command of recovery
//! on; the WAL counts the same commands in the same order and reports how many are durable.
//! A Ready that wrote something gets a wait for "every command handed out so far"; its
//! persisted messages (votes, append acknowledgements) and its persist mark are released only
//! when the WAL's count reaches it. A Ready that wrote nothing releases at once only if no
//! earlier wait is pending (releases stay in order).
//!
//! ```text
//! commands handed out:  1 Append   2 Append   3 Compact   4 Append
//! waits:                [<=2: ack a]           [<=4: ack b]
//! durable report 3  ->  release ack a (2 <= 3); ack b waits for 4
//! ```

use std::collections::VecDeque;

use kvraft::{Index, Message, Term};

/// Messages and a persist mark that may go once the WAL's durable count reaches `commands`.
#[derive(Debug)]
struct Wait {
    commands: u64,
    messages: Vec<Message>,
    mark: (Index, Term),
}

/// What a durable report (or a Ready without writes) lets go.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Release {
    pub messages: Vec<Message>,
    pub mark: (Index, Term),
}

#[derive(Debug, Default)]
pub(crate) struct Pipeline {
    /// WAL commands handed out since the WAL was opened (recovery's included).
    submitted_total: u64,
    /// The WAL's latest report.
    durable_total: u64,
    waits: VecDeque<Wait>,
}

impl Pipeline {
    /// Counts one WAL command handed out.
    pub fn submit(&mut self) {
        self.submitted_total += 1;
    }

    /// After handing out a Ready's writes (`wrote`: whether it had any). Returns the release
    /// that may happen now, or `None` if it must wait for the WAL.
    pub fn after_ready(
        &mut self,
        wrote: bool,
        messages: Vec<Message>,
        mark: (Index, Term),
    ) -> Option<Release> {
        if self.waits.is_empty() && !wrote {
            return Some(Release { messages, mark });
        }
        self.waits.push_back(Wait {
            commands: self.submitted_total,
            messages,
            mark,
        });
        None
    }

    /// The WAL reports `total` commands durable. Returns the releases, in order.
    ///
    /// Panics if the WAL reports more commands than were handed out, or its count goes back:
    /// the accounting is broken, and releasing anything on it could acknowledge data that is
    /// not on disk.
    pub fn on_durable(&mut self, total: u64) -> Vec<Release> {
        assert!(
            total <= self.submitted_total,
            "the WAL reports {total} commands durable, only {} were handed out",
            self.submitted_total
        );
        assert!(
            total >= self.durable_total,
            "the WAL's durable count went back from {} to {total}",
            self.durable_total
        );
        self.durable_total = total;
        let mut released = Vec::new();
        while self.waits.front().is_some_and(|w| w.commands <= total) {
            if let Some(wait) = self.waits.pop_front() {
                released.push(Release {
                    messages: wait.messages,
                    mark: wait.mark,
                });
            }
        }
        released
    }

    /// Whether anything waits for the WAL.
    pub fn is_waiting(&self) -> bool {
        !self.waits.is_empty()
    }

    pub fn submitted_total(&self) -> u64 {
        self.submitted_total
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kvraft::MessageBody;

    fn ack(index: Index) -> Message {
        Message {
            from: 2,
            to: 1,
            term: 1,
            body: MessageBody::AppendResponse {
                index,
                reject: None,
            },
        }
    }

    #[test]
    fn a_write_waits_for_its_command() {
        let mut pipeline = Pipeline::default();
        pipeline.submit();
        assert_eq!(pipeline.after_ready(true, vec![ack(3)], (3, 1)), None);
        assert!(pipeline.is_waiting());
        let released = pipeline.on_durable(1);
        assert_eq!(released.len(), 1);
        assert_eq!(released[0].mark, (3, 1));
        assert!(!pipeline.is_waiting());
    }

    #[test]
    fn nothing_overtakes_an_earlier_wait() {
        let mut pipeline = Pipeline::default();
        pipeline.submit();
        assert!(pipeline.after_ready(true, vec![ack(1)], (1, 1)).is_none());
        // A Ready without writes (a heartbeat response) still waits behind the first.
        assert!(pipeline.after_ready(false, vec![ack(1)], (1, 1)).is_none());
        assert_eq!(pipeline.on_durable(1).len(), 2);
        assert!(pipeline.after_ready(false, vec![ack(1)], (1, 1)).is_some());
    }

    #[test]
    fn recovery_commands_count() {
        // Issue 10, bug 2: recovery's Compact is command 1; the first Append is command 2. A
        // report of 1 durable command must not release the Append's acknowledgement.
        let mut pipeline = Pipeline::default();
        pipeline.submit();
        pipeline.submit();
        assert!(pipeline.after_ready(true, vec![ack(5)], (5, 1)).is_none());
        assert!(pipeline.on_durable(1).is_empty());
        assert_eq!(pipeline.on_durable(2).len(), 1);
    }

    #[test]
    #[should_panic(expected = "only 0 were handed out")]
    fn a_report_beyond_what_was_handed_out_is_a_bug() {
        let mut pipeline = Pipeline::default();
        pipeline.on_durable(1);
    }
}
