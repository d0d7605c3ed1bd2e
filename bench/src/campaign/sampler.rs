//! Polls each node's metrics once a second (raft_role, raft_term, raft_commit_index), one
//! thread per node so that a paused node's timeout does not delay the others' samples.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use nemesis::fault::unix_ms_now;
use nemesis::metrics;
use serde::{Deserialize, Serialize};

/// Time between two samples of one node.
pub const SAMPLE_INTERVAL_MS: u64 = 1000;
/// How long one scrape may take (a paused node never answers).
pub const SAMPLE_TIMEOUT_MS: u64 = 400;

/// One poll of one node. `role` is `None` (and `error` says why) when the node did not answer.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Sample {
    pub node: u64,
    pub unix_ms: u64,
    pub role: Option<String>,
    pub term: Option<u64>,
    pub commit_index: Option<u64>,
    pub error: Option<String>,
}

pub struct Sampler {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
    samples: Arc<Mutex<Vec<Sample>>>,
}

impl Sampler {
    pub fn start(nodes: &[(u64, SocketAddr)]) -> Sampler {
        let stop = Arc::new(AtomicBool::new(false));
        let samples = Arc::new(Mutex::new(Vec::new()));
        let threads = nodes
            .iter()
            .map(|&(node, address)| {
                let stop = stop.clone();
                let samples = samples.clone();
                std::thread::spawn(move || poll(node, address, &stop, &samples))
            })
            .collect();
        Sampler {
            stop,
            threads,
            samples,
        }
    }

    /// Stops the threads; the samples in time order.
    pub fn finish(self) -> Vec<Sample> {
        self.stop.store(true, Ordering::Relaxed);
        for thread in self.threads {
            let _ = thread.join();
        }
        let mut samples =
            std::mem::take(&mut *self.samples.lock().unwrap_or_else(PoisonError::into_inner));
        samples.sort_by_key(|sample| (sample.unix_ms, sample.node));
        samples
    }
}

fn poll(node: u64, address: SocketAddr, stop: &AtomicBool, samples: &Mutex<Vec<Sample>>) {
    let interval = Duration::from_millis(SAMPLE_INTERVAL_MS);
    let mut next = Instant::now();
    while !stop.load(Ordering::Relaxed) {
        let sample = sample(node, address);
        samples
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(sample);
        next += interval;
        // Short sleeps so that `finish` does not wait a whole interval.
        while !stop.load(Ordering::Relaxed) && Instant::now() < next {
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

fn sample(node: u64, address: SocketAddr) -> Sample {
    let unix_ms = unix_ms_now();
    let timeout = Duration::from_millis(SAMPLE_TIMEOUT_MS);
    match metrics::scrape(address, timeout) {
        Ok(text) => {
            let role = metrics::gauge(&text, "raft_role")
                .and_then(metrics::Role::from_gauge)
                .map(|role| role.name().to_string());
            Sample {
                node,
                unix_ms,
                role,
                term: metrics::gauge(&text, "raft_term").map(|v| v as u64),
                commit_index: metrics::gauge(&text, "raft_commit_index").map(|v| v as u64),
                error: None,
            }
        }
        Err(error) => Sample {
            node,
            unix_ms,
            role: None,
            term: None,
            commit_index: None,
            error: Some(error.to_string()),
        },
    }
}
