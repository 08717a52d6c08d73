//! The journal writer: one task owns the reservation journal ([`Store`]) and appends
//! the records of each [`Effects`](crate::region::Effects) in the order they were
//! queued. The records are queued under the region's lock (so they keep the order the
//! region made them in) and written off it; whoever queued them waits for the write
//! before publishing the answers they back, so that a crash never leaves an answer
//! out whose reservation the journal lacks.

use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::store::{Record, Store};

/// Records to write, and who waits for them.
struct Batch {
    records: Vec<Record>,
    written: oneshot::Sender<()>,
}

/// The sending side of the journal writer.
#[derive(Debug, Clone)]
pub struct Journal {
    tx: mpsc::UnboundedSender<Batch>,
}

/// A batch of records queued for the journal; [`Written::wait`] until they are on disk.
#[must_use = "wait for the records before publishing what they back"]
pub struct Written(Option<oneshot::Receiver<()>>);

impl Written {
    /// Nothing to wait for.
    pub fn none() -> Self {
        Self(None)
    }

    /// Waits until the records are written; false if the writer is gone (stopped).
    pub async fn wait(self) -> bool {
        match self.0 {
            None => true,
            Some(rx) => rx.await.is_ok(),
        }
    }
}

impl Journal {
    /// Starts the writer task. It writes until `stop` is cancelled, then writes what
    /// is still queued and ends.
    pub fn start(store: Store, stop: CancellationToken) -> (Self, JoinHandle<()>) {
        let (tx, rx) = mpsc::unbounded_channel();
        (Self { tx }, tokio::spawn(write_all(store, rx, stop)))
    }

    /// Queues `records` (none: nothing to wait for).
    pub fn write(&self, records: Vec<Record>) -> Written {
        if records.is_empty() {
            return Written::none();
        }
        let (written, rx) = oneshot::channel();
        match self.tx.send(Batch { records, written }) {
            Ok(()) => Written(Some(rx)),
            // The writer is gone: `wait` says so.
            Err(_) => Written(Some(oneshot::channel().1)),
        }
    }
}

async fn write_all(
    mut store: Store,
    mut rx: mpsc::UnboundedReceiver<Batch>,
    stop: CancellationToken,
) {
    loop {
        tokio::select! {
            biased;
            batch = rx.recv() => match batch {
                Some(batch) => write(&mut store, batch),
                None => return,
            },
            _ = stop.cancelled() => break,
        }
    }
    rx.close();
    while let Some(batch) = rx.recv().await {
        write(&mut store, batch);
    }
}

/// Appends one batch (a line per record: small writes to the page cache) and says so.
fn write(store: &mut Store, batch: Batch) {
    for record in batch.records {
        store.append(record);
    }
    let _ = batch.written.send(());
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ended(id: &str) -> Record {
        Record::Ended { id: id.into() }
    }

    fn lines(dir: &std::path::Path) -> Vec<String> {
        std::fs::read_to_string(dir.join("n.jsonl"))
            .unwrap()
            .lines()
            .map(str::to_owned)
            .collect()
    }

    /// Batches are on disk, in the order queued, when their wait returns; what is
    /// queued before the stop is still written; after it, waiting says so.
    #[tokio::test]
    async fn records_are_written_in_order_before_the_wait_returns() {
        let dir = tempfile::tempdir().unwrap();
        let (store, _) = Store::open(dir.path(), "n", 0).unwrap();
        let stop = CancellationToken::new();
        let (journal, task) = Journal::start(store, stop.clone());
        assert!(journal.write(Vec::new()).wait().await, "nothing to write");
        let first = journal.write(vec![ended("a"), ended("b")]);
        let second = journal.write(vec![ended("c")]);
        assert!(second.wait().await);
        assert!(first.wait().await);
        assert_eq!(
            lines(dir.path()),
            [
                r#"{"op":"ended","id":"a"}"#,
                r#"{"op":"ended","id":"b"}"#,
                r#"{"op":"ended","id":"c"}"#
            ]
        );
        let last = journal.write(vec![ended("d")]);
        stop.cancel();
        task.await.unwrap();
        assert!(last.wait().await, "queued before the stop: written");
        assert_eq!(lines(dir.path()).len(), 4);
        assert!(!journal.write(vec![ended("e")]).wait().await);
    }
}
