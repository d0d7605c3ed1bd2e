//! Snapshot files over a bidirectional stream of their own:
//!
//! ```text
//! sender:   SNAPSHOT tag | frame(SnapshotHeader{meta, total_bytes, crc32}) | file bytes... | FIN
//! receiver: frame(SnapshotAck{ok, reason})
//! ```
//!
//! The sender reads the file in `snapshot_chunk_bytes` pieces and writes each with
//! `write_all`, so QUIC flow control paces it to the receiver's disk. The receiver writes to a
//! temporary file in `snapshot_dir`, fsyncs it, checks length and CRC, renames it into place,
//! fsyncs the directory, hands it to the node, and only then acknowledges.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Bytes of a received snapshot written before it is fdatasynced (as kvstorage's
/// `WRITEBACK_SYNC_BYTES`: the node's WAL must not queue behind a large flush).
const SNAPSHOT_WRITEBACK_SYNC_BYTES: u64 = 1 << 20;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::codec;
use super::stats::TransportStats;
use super::wire::{self, SnapshotAck, SnapshotHeader};
use super::{Inbound, Shared};
use kvraft::message::{NodeId, SnapshotMeta};

/// Makes temporary file names unique within the process (several transfers may overlap).
static TEMP_FILE_SEQUENCE: AtomicU64 = AtomicU64::new(0);

/// Streams `path` to `to`, then reports the outcome to the node.
pub(crate) async fn send(shared: Arc<Shared>, to: NodeId, meta: SnapshotMeta, path: PathBuf) {
    let timeout = Duration::from_millis(shared.limits.snapshot_transfer_timeout_ms);
    let mut shutdown = shared.shutdown.clone();
    let result = tokio::select! {
        transfer = tokio::time::timeout(timeout, transfer(&shared, to, &meta, &path)) => {
            transfer.unwrap_or_else(|_| Err("transfer timed out".to_string()))
        }
        _ = shutdown.wait_for(|stopping| *stopping) => Err("transport shut down".to_string()),
    };
    let ok = match result {
        Ok(()) => {
            TransportStats::inc(&shared.stats.snapshots_sent_total);
            tracing::info!(to, index = meta.last_index, "snapshot sent");
            true
        }
        Err(reason) => {
            TransportStats::inc(&shared.stats.snapshots_send_failures_total);
            tracing::warn!(
                to,
                index = meta.last_index,
                "snapshot send failed: {reason}"
            );
            false
        }
    };
    let _ = shared
        .inbound
        .send(Inbound::SnapshotSent { to, meta, ok })
        .await;
}

/// Length and CRC32 of the whole file, read in chunks.
async fn checksum(path: &Path, chunk_bytes: usize) -> std::io::Result<(u64, u32)> {
    let mut file = tokio::fs::File::open(path).await?;
    let mut buffer = vec![0u8; chunk_bytes];
    let mut hasher = crc32fast::Hasher::new();
    let mut total = 0u64;
    loop {
        let n = file.read(&mut buffer).await?;
        if n == 0 {
            return Ok((total, hasher.finalize()));
        }
        hasher.update(&buffer[..n]);
        total += n as u64;
    }
}

async fn connection_to(shared: &Shared, to: NodeId) -> Result<quinn::Connection, String> {
    let peer = shared.peer(to).ok_or(format!("unknown peer {to}"))?;
    let mut watch = peer.connection();
    // The peer task owns the connection; wait (within the transfer timeout) until it is up.
    let connection = watch
        .wait_for(Option::is_some)
        .await
        .map_err(|e| e.to_string())?;
    connection
        .clone()
        .ok_or_else(|| "no connection".to_string())
}

async fn transfer(
    shared: &Shared,
    to: NodeId,
    meta: &SnapshotMeta,
    path: &Path,
) -> Result<(), String> {
    let chunk_bytes = shared.limits.snapshot_chunk_bytes;
    let describe = |e: std::io::Error| format!("{}: {e}", path.display());
    let (total_bytes, crc32) = checksum(path, chunk_bytes).await.map_err(describe)?;
    let connection = connection_to(shared, to).await?;
    let (mut send, mut recv) = connection.open_bi().await.map_err(|e| e.to_string())?;
    let header = SnapshotHeader {
        meta: meta.clone(),
        total_bytes,
        crc32,
    };
    let frame =
        codec::encode_frame(&header, shared.limits.frame_bytes_max).map_err(|e| e.to_string())?;
    send.write_all(&[wire::STREAM_TAG_SNAPSHOT])
        .await
        .map_err(|e| e.to_string())?;
    send.write_all(&frame).await.map_err(|e| e.to_string())?;
    let mut file = tokio::fs::File::open(path).await.map_err(describe)?;
    let mut buffer = vec![0u8; chunk_bytes];
    let mut sent = 0u64;
    while sent < total_bytes {
        let n = file.read(&mut buffer).await.map_err(describe)?;
        if n == 0 {
            break; // Shrunk since the checksum: the receiver's length check refuses it.
        }
        send.write_all(&buffer[..n])
            .await
            .map_err(|e| e.to_string())?;
        sent += n as u64;
    }
    send.finish().map_err(|e| e.to_string())?;
    let ack = codec::read_frame::<SnapshotAck, _>(&mut recv, shared.limits.frame_bytes_max);
    match ack.await.map_err(|e| format!("no acknowledgement: {e}"))? {
        Some(SnapshotAck { ok: true, .. }) => Ok(()),
        Some(SnapshotAck { reason, .. }) => Err(format!("receiver refused: {reason}")),
        None => Err("receiver closed without acknowledgement".to_string()),
    }
}

/// Receives one snapshot from the authenticated node `from`.
pub(crate) async fn receive(
    shared: &Shared,
    from: NodeId,
    mut send: quinn::SendStream,
    mut recv: quinn::RecvStream,
) {
    let outcome = receive_file(shared, from, &mut recv).await;
    let ack = match outcome {
        Ok((meta, path)) => {
            TransportStats::inc(&shared.stats.snapshots_received_total);
            tracing::info!(from, index = meta.last_index, "snapshot received");
            let inbound = Inbound::Snapshot { from, meta, path };
            let delivered = shared.inbound.send(inbound).await.is_ok();
            let reason = if delivered {
                String::new()
            } else {
                "node stopped".to_string()
            };
            SnapshotAck {
                ok: delivered,
                reason,
            }
        }
        Err(reason) => {
            TransportStats::inc(&shared.stats.snapshots_receive_failures_total);
            tracing::warn!(from, "snapshot receive failed: {reason}");
            SnapshotAck { ok: false, reason }
        }
    };
    if let Ok(frame) = codec::encode_frame(&ack, shared.limits.frame_bytes_max) {
        if send.write_all(&frame).await.is_ok() {
            let _ = send.finish();
            let _ = send.stopped().await;
        }
    }
}

async fn receive_file(
    shared: &Shared,
    from: NodeId,
    recv: &mut quinn::RecvStream,
) -> Result<(SnapshotMeta, PathBuf), String> {
    let header = codec::read_frame::<SnapshotHeader, _>(recv, shared.limits.frame_bytes_max);
    let header = header
        .await
        .map_err(|e| format!("header: {e}"))?
        .ok_or("no header")?;
    if header.total_bytes > shared.limits.snapshot_bytes_max {
        let _ = recv.stop(wire::STREAM_TOO_LARGE.into());
        return Err(format!(
            "{} bytes exceed snapshot_bytes_max",
            header.total_bytes
        ));
    }
    let sequence = TEMP_FILE_SEQUENCE.fetch_add(1, Ordering::Relaxed);
    let index = header.meta.last_index;
    let temp = shared
        .snapshot_dir
        .join(format!(".recv-{from}-{index}-{sequence}.tmp"));
    let result = write_verified(shared, recv, &header, &temp).await;
    if let Err(reason) = result {
        let _ = tokio::fs::remove_file(&temp).await;
        let _ = recv.stop(wire::STREAM_MALFORMED.into());
        return Err(reason);
    }
    let name = format!(
        "snapshot-from-{from}-{}-{index}-{sequence}.snap",
        header.meta.last_term
    );
    let path = shared.snapshot_dir.join(name);
    tokio::fs::rename(&temp, &path)
        .await
        .map_err(|e| format!("rename: {e}"))?;
    // The rename is durable only once the directory is synced.
    let dir = tokio::fs::File::open(&shared.snapshot_dir).await;
    dir.map_err(|e| format!("open dir: {e}"))?
        .sync_all()
        .await
        .map_err(|e| e.to_string())?;
    Ok((header.meta, path))
}

/// Copies exactly `header.total_bytes` from the stream into `temp`, fsyncs, checks the CRC.
async fn write_verified(
    shared: &Shared,
    recv: &mut quinn::RecvStream,
    header: &SnapshotHeader,
    temp: &Path,
) -> Result<(), String> {
    let mut file = tokio::fs::File::create(temp)
        .await
        .map_err(|e| format!("create: {e}"))?;
    let mut buffer = vec![0u8; shared.limits.snapshot_chunk_bytes];
    let mut hasher = crc32fast::Hasher::new();
    let mut received = 0u64;
    let mut unsynced_bytes = 0u64;
    loop {
        // Fill the whole buffer before writing: QUIC hands out packet-sized pieces, and each
        // tokio::fs write is a trip to the blocking pool.
        let filled = fill(recv, &mut buffer).await?;
        if filled == 0 {
            break;
        }
        received += filled as u64;
        if received > header.total_bytes {
            return Err(format!(
                "more than the announced {} bytes",
                header.total_bytes
            ));
        }
        hasher.update(&buffer[..filled]);
        file.write_all(&buffer[..filled])
            .await
            .map_err(|e| format!("write: {e}"))?;
        // Paced writeback: no large dirty backlog for the WAL's fdatasync to queue behind.
        unsynced_bytes += filled as u64;
        if unsynced_bytes >= SNAPSHOT_WRITEBACK_SYNC_BYTES {
            file.sync_data().await.map_err(|e| format!("fsync: {e}"))?;
            unsynced_bytes = 0;
        }
    }
    if received != header.total_bytes {
        return Err(format!("got {received} of {} bytes", header.total_bytes));
    }
    file.sync_all().await.map_err(|e| format!("fsync: {e}"))?;
    let crc32 = hasher.finalize();
    if crc32 != header.crc32 {
        return Err(format!(
            "crc32 {crc32:08x}, header says {:08x}",
            header.crc32
        ));
    }
    Ok(())
}

/// Reads until `buffer` is full or the stream ends; returns the bytes read.
async fn fill(recv: &mut quinn::RecvStream, buffer: &mut [u8]) -> Result<usize, String> {
    let mut filled = 0;
    while filled < buffer.len() {
        match recv.read(&mut buffer[filled..]).await {
            Ok(Some(n)) => filled += n,
            Ok(None) => break,
            Err(e) => return Err(format!("read: {e}")),
        }
    }
    Ok(filled)
}
