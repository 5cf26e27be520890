//! Snapshots: [`Engine::put_snapshot`] and [`Engine::snapshot`].
//!
//! A snapshot is the whole hub state, so it can be large. It is stored in
//! chunks of [`CHUNK_BYTES`], one `SET` each, then committed by a small
//! script that swaps the pointer in `{prefix}:snapshot`: Redis runs one
//! command at a time, and with `appendfsync always` each write is fsynced
//! before the next command runs, so a single 200 MB `SET` would stall
//! every append for as long as that write and fsync take. Chunks also keep
//! each value far below Redis's 512 MB limit.

use std::time::Duration;

use bytes::{Bytes, BytesMut};

use crate::engine::Engine;
use crate::error::{EngineError, Result};
use crate::{LogPos, scripts};

/// Bytes per snapshot chunk: one write of this size stalls Redis for a few
/// milliseconds at most, and a snapshot of 100 MB is 25 commands.
pub(crate) const CHUNK_BYTES: usize = 4 << 20;

/// How long uploaded chunks live before their commit: a node that dies
/// mid-upload leaves nothing behind for longer than this.
const UPLOAD_TTL: Duration = Duration::from_secs(3600);

/// How often a read starts over when a newer snapshot replaced the one
/// it was reading (whose chunks the commit deleted).
const READ_ATTEMPTS: usize = 3;

impl Engine {
    /// Stores a snapshot of the state after the entry at `pos` (unless a
    /// newer one is already stored), then trims the log entries older than
    /// the stored snapshot's position minus `log_keep`.
    ///
    /// # Errors
    ///
    /// [`EngineError::Unavailable`] when Redis cannot take it (nothing is
    /// committed then; uploaded chunks expire).
    pub async fn put_snapshot(&self, pos: LogPos, blob: Bytes) -> Result<()> {
        let keys = &self.shared.keys;
        let config = &self.shared.config;
        let upload = format!("{}:{}:{pos}", keys.snapshot, config.node);
        let chunks = blob.len().div_ceil(CHUNK_BYTES);
        let ttl = u64::try_from(UPLOAD_TTL.as_millis()).unwrap_or(u64::MAX);
        for (i, chunk) in blob.chunks(CHUNK_BYTES).enumerate() {
            let key = format!("{upload}:{i}");
            let () = self
                .run(async |conn| {
                    redis::cmd("SET")
                        .arg(&key)
                        .arg(chunk)
                        .arg("PX")
                        .arg(ttl)
                        .query_async(conn)
                        .await
                })
                .await?;
        }
        let mut invocation = scripts::SNAPSHOT.prepare_invoke();
        invocation
            .key(&keys.snapshot)
            .key(&keys.log)
            .arg(pos.to_string())
            .arg(pos.ms)
            .arg(pos.seq)
            .arg(&upload)
            .arg(chunks)
            .arg(u64::try_from(config.log_keep.as_millis()).unwrap_or(u64::MAX));
        let (stored, trimmed): (i64, i64) = self
            .run(async |conn| invocation.invoke_async(conn).await)
            .await?;
        tracing::debug!(%pos, bytes = blob.len(), stored = stored == 1, trimmed, "snapshot");
        Ok(())
    }

    /// The latest snapshot and the log position it covers, if any.
    ///
    /// # Errors
    ///
    /// [`EngineError::Unavailable`] when Redis cannot answer.
    pub async fn snapshot(&self) -> Result<Option<(LogPos, Bytes)>> {
        for _ in 0..READ_ATTEMPTS {
            let Some((pos, upload, chunks)) = self.snapshot_pointer().await? else {
                return Ok(None);
            };
            let mut blob = BytesMut::new();
            let mut complete = true;
            for i in 0..chunks {
                let key = format!("{upload}:{i}");
                let chunk: Option<Vec<u8>> = self
                    .run(async |conn| redis::cmd("GET").arg(&key).query_async(conn).await)
                    .await?;
                match chunk {
                    Some(chunk) => blob.extend_from_slice(&chunk),
                    None => {
                        complete = false;
                        break;
                    }
                }
            }
            if complete {
                return Ok(Some((pos, blob.freeze())));
            }
            // A newer snapshot was committed meanwhile: read that one.
        }
        Err(EngineError::unavailable(
            "snapshots are replaced faster than they can be read",
            Duration::ZERO,
        ))
    }

    /// `(pos, upload key prefix, chunk count)` of the stored snapshot.
    async fn snapshot_pointer(&self) -> Result<Option<(LogPos, String, u64)>> {
        let (pos, upload, chunks): (Option<Vec<u8>>, Option<String>, Option<u64>) = self
            .run(async |conn| {
                redis::cmd("HMGET")
                    .arg(&self.shared.keys.snapshot)
                    .arg("pos")
                    .arg("upload")
                    .arg("chunks")
                    .query_async(conn)
                    .await
            })
            .await?;
        match (pos, upload, chunks) {
            (Some(pos), Some(upload), Some(chunks)) => {
                Ok(Some((LogPos::from_bytes(&pos)?, upload, chunks)))
            }
            (None, None, None) => Ok(None),
            _ => Err(EngineError::Protocol(
                "the snapshot hash lacks its pos, upload or chunks".into(),
            )),
        }
    }
}
