//! What a peer may hold on this node: connections per certificate identity, and client request
//! bytes in flight per connection (see the worst-case table on `TransportLimits`).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::Bytes;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::tls::Identity;

/// Established connections per certificate identity.
#[derive(Debug, Default)]
pub(crate) struct IdentityCounts {
    open: Mutex<HashMap<Identity, usize>>,
}

impl IdentityCounts {
    fn lock(&self) -> MutexGuard<'_, HashMap<Identity, usize>> {
        // Each update is one statement on the map, so a panic elsewhere while holding the lock
        // cannot leave it inconsistent: a poisoned lock is still usable.
        self.open
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Takes one of `identity`'s `max` slots, or returns how many it already holds.
    pub fn try_acquire(
        self: &Arc<Self>,
        identity: &Identity,
        max: usize,
    ) -> Result<IdentitySlot, usize> {
        let mut open = self.lock();
        let count = open.entry(identity.clone()).or_insert(0);
        if *count >= max {
            return Err(*count);
        }
        *count += 1;
        Ok(IdentitySlot {
            counts: self.clone(),
            identity: identity.clone(),
        })
    }

    /// Connections `identity` holds now.
    #[cfg(test)]
    pub fn open(&self, identity: &Identity) -> usize {
        self.lock().get(identity).copied().unwrap_or(0)
    }
}

/// One established connection of an identity; gives its slot back when dropped.
#[derive(Debug)]
pub(crate) struct IdentitySlot {
    counts: Arc<IdentityCounts>,
    identity: Identity,
}

impl Drop for IdentitySlot {
    fn drop(&mut self) {
        let mut open = self.counts.lock();
        if let Some(count) = open.get_mut(&self.identity) {
            *count -= 1;
            if *count == 0 {
                open.remove(&self.identity);
            }
        }
    }
}

/// A connection's budget of client request bytes in flight.
#[derive(Clone, Debug)]
pub(crate) struct InflightBudget {
    semaphore: Arc<Semaphore>,
}

impl InflightBudget {
    /// `bytes_max` is validated against `Semaphore::MAX_PERMITS` in `TransportLimits::validate`.
    pub fn new(bytes_max: u64) -> InflightBudget {
        let permits = usize::try_from(bytes_max)
            .unwrap_or(Semaphore::MAX_PERMITS)
            .min(Semaphore::MAX_PERMITS);
        InflightBudget {
            semaphore: Arc::new(Semaphore::new(permits)),
        }
    }

    /// Charges `bytes` now, or `None` if they do not fit what is left. Never waits: see
    /// `TransportLimits` for why a request that does not fit is refused.
    pub fn try_charge(&self, bytes: u32) -> Option<OwnedSemaphorePermit> {
        self.semaphore.clone().try_acquire_many_owned(bytes).ok()
    }

    #[cfg(test)]
    pub fn available(&self) -> usize {
        self.semaphore.available_permits()
    }
}

/// A request's bytes together with their charge: the charge ends when the last `Bytes`
/// handle to them is dropped, wherever that happens (stream task, inbound queue, node).
struct Charged {
    payload: Vec<u8>,
    _charge: OwnedSemaphorePermit,
}

impl AsRef<[u8]> for Charged {
    fn as_ref(&self) -> &[u8] {
        &self.payload
    }
}

/// Wraps a request read under `charge` so that the charge lives as long as the bytes.
pub(crate) fn charged_bytes(payload: Vec<u8>, charge: OwnedSemaphorePermit) -> Bytes {
    Bytes::from_owner(Charged {
        payload,
        _charge: charge,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn admission_identity_slots_are_counted_and_given_back() {
        let counts = Arc::new(IdentityCounts::default());
        let client = Identity::Client("client1".into());
        let other = Identity::Node("n2".into());
        let first = counts.try_acquire(&client, 2).unwrap();
        let second = counts.try_acquire(&client, 2).unwrap();
        assert_eq!(counts.try_acquire(&client, 2).unwrap_err(), 2);
        let _node = counts.try_acquire(&other, 2).unwrap();
        drop(first);
        assert_eq!(counts.open(&client), 1);
        let third = counts.try_acquire(&client, 2).unwrap();
        drop((second, third));
        assert_eq!(counts.open(&client), 0);
        assert_eq!(counts.open(&other), 1);
    }

    #[test]
    fn admission_charge_lasts_as_long_as_the_request_bytes() {
        let budget = InflightBudget::new(100);
        let charge = budget.try_charge(60).unwrap();
        assert!(
            budget.try_charge(41).is_none(),
            "over the budget: refused, not queued"
        );
        let request = charged_bytes(vec![1; 60], charge);
        let slice = request.slice(10..20);
        drop(request);
        assert_eq!(budget.available(), 40, "a slice still holds the bytes");
        drop(slice);
        assert_eq!(budget.available(), 100);
        assert!(budget.try_charge(0).is_some());
    }
}
