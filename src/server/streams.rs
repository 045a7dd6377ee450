//! Event streams: opening one (head, `retry`, `connected`, replay or snapshot), heartbeats,
//! fan-out of a notification to every stream of its user, and ending a stream properly.
//!
//! Every frame is encoded once as an HTTP chunk; HTTP/1.0 streams get the same bytes without
//! the chunk framing.

use super::requests::Reply;
use super::{Now, Server};
use crate::api::{self, Resume, StreamStart};
use crate::conn::{Conn, Phase, StreamState};
use crate::domain::UserId;
use crate::http::{self, Request};
use crate::jwt;
use crate::metrics::CloseReason;
use crate::sse;
use crate::writes::Notification;

impl Server {
    pub(super) fn start_stream(
        &mut self,
        key: usize,
        request: &Request<'_>,
        start: StreamStart,
        reply: &Reply,
        now: Now,
    ) {
        let chunked = !request.http10;
        let mut out = std::mem::take(&mut self.scratch_out);
        out.clear();
        http::start_head(&mut out, 200);
        http::header(&mut out, "Content-Type", b"text/event-stream");
        let cache = if reply.token_in_query { &b"no-cache, no-store"[..] } else { b"no-cache" };
        http::header(&mut out, "Cache-Control", cache);
        http::header(&mut out, "X-Accel-Buffering", b"no");
        self.write_cors(&mut out, reply);
        if chunked {
            http::header(&mut out, "Transfer-Encoding", b"chunked");
        }
        // The stream is the last thing on this connection, whatever it ends by.
        out.extend_from_slice(b"Connection: close\r\n\r\n");
        let opened = self.encode_stream_opening(&mut out, &start, chunked, now);
        let events = match opened {
            Ok(events) => events,
            Err(e) => {
                self.scratch_out = out;
                let reply = Reply { keep_alive: false, ..reply.clone() };
                self.respond(key, &api::storage_error(e), &reply, now);
                return;
            }
        };
        let Some(conn) = self.conns.get_mut(key) else {
            self.scratch_out = out;
            return;
        };
        let lifetime_ms = (start.expires_at.saturating_add(jwt::LEEWAY_SECS))
            .saturating_mul(1000)
            .saturating_sub(now.epoch_ms)
            .max(0) as u64;
        let stream = StreamState {
            user: start.user,
            expires_at_ms: now.mono_ms.saturating_add(lifetime_ms),
            next_heartbeat_ms: now.mono_ms + self.config.heartbeat_secs * 1000,
            chunked,
        };
        let deadline = stream.next_heartbeat_ms.min(stream.expires_at_ms);
        conn.phase = Phase::Stream(stream);
        conn.inbuf = None; // anything after the stream request is ignored
        let open = self.registry.add(start.user, key);
        self.wheel.schedule(key, deadline);
        self.metrics.streams_started += 1;
        self.metrics.count_request(reply.route, 200);
        self.metrics.events_connected += 1;
        self.metrics.events_notification += events;
        log::info!("SSE client connected for user {} ({} open)", start.user, open);
        self.send_with_allowance(key, &out, out.len(), now);
        self.scratch_out = out;
    }

    /// `retry:`, `connected`, then the missed notifications or the current status.
    pub(super) fn encode_stream_opening(
        &mut self,
        out: &mut Vec<u8>,
        start: &StreamStart,
        chunked: bool,
        now: Now,
    ) -> Result<u64, crate::store::StoreError> {
        let retry_ms = self.config.retry_ms;
        let mut notifications = 0;
        let frame = |out: &mut Vec<u8>, encode: &mut dyn FnMut(&mut Vec<u8>)| {
            if chunked {
                sse::encode_chunk(out, |o| encode(o));
            } else {
                encode(out);
            }
        };
        frame(out, &mut |o| {
            sse::encode_retry(o, retry_ms);
            sse::encode_event(
                o,
                None,
                "connected",
                r#"{"message":"Connected to Spending notifications"}"#,
            );
        });
        match start.resume {
            Resume::After(last) => {
                self.store.notifications_after(start.user, last, |id, data| {
                    notifications += 1;
                    frame(out, &mut |o| sse::encode_event(o, Some(id), "notification", data));
                })?;
            }
            Resume::Snapshot => {
                if let Some(status) = self.store.active_status(start.user, now.epoch_ms)? {
                    let id = self.store.last_notification_id(start.user)?;
                    let mut data = String::with_capacity(256);
                    status.write_notification_json(start.user, now.epoch_ms, &mut data);
                    notifications += 1;
                    frame(out, &mut |o| sse::encode_event(o, Some(id), "notification", &data));
                }
            }
        }
        Ok(notifications)
    }

    pub(super) fn on_stream_timer(&mut self, key: usize, now: Now) {
        let Some(Conn { phase: Phase::Stream(stream), .. }) = self.conns.get(key) else {
            return;
        };
        if now.mono_ms >= stream.expires_at_ms {
            self.end_stream(key, CloseReason::Expired, now);
            return;
        }
        if now.mono_ms >= stream.next_heartbeat_ms {
            let chunked = stream.chunked;
            let epoch_ms = now.epoch_ms;
            if !matches!(&self.heartbeat_frame, Some((at, ..)) if *at == epoch_ms) {
                let mut frame = Vec::with_capacity(64);
                let inner = sse::encode_chunk(&mut frame, |o| sse::encode_heartbeat(o, epoch_ms));
                self.heartbeat_frame = Some((epoch_ms, frame, inner));
            }
            let Some((at, frame, inner)) = self.heartbeat_frame.take() else {
                return;
            };
            let bytes = if chunked { &frame[..] } else { &frame[inner.clone()] };
            self.metrics.events_heartbeat += 1;
            self.send(key, bytes, now);
            self.heartbeat_frame = Some((at, frame, inner));
        }
        let period = self.config.heartbeat_secs * 1000;
        let Some(Conn { phase: Phase::Stream(stream), doomed: None, .. }) = self.conns.get_mut(key)
        else {
            return;
        };
        while stream.next_heartbeat_ms <= now.mono_ms {
            stream.next_heartbeat_ms += period;
        }
        let deadline = stream.next_heartbeat_ms.min(stream.expires_at_ms);
        self.wheel.schedule(key, deadline);
        self.check_backlog(key, now);
    }

    /// Ends a stream properly: the last chunk (so `curl -N` exits 0), then FIN.
    pub(super) fn end_stream(&mut self, key: usize, reason: CloseReason, now: Now) {
        let Some(conn) = self.conns.get_mut(key) else {
            return;
        };
        let Phase::Stream(stream) = &conn.phase else {
            return;
        };
        let (user, chunked) = (stream.user, stream.chunked);
        conn.phase = Phase::Closing { user: Some(user), fin_sent: false };
        let why = match reason {
            CloseReason::Expired => "token expired",
            CloseReason::Deactivated => "user deactivated",
            CloseReason::Shutdown => "server shutting down",
            _ => reason.label(),
        };
        log::info!("SSE stream ended for user {user}: {why}");
        let open = self.registry.remove(user, key);
        log::info!("SSE client removed for user {user} ({open} open)");
        if chunked {
            self.send(key, sse::LAST_CHUNK, now);
        }
        self.begin_close(key, reason, now);
    }

    /// Ends every open stream of `user` (deactivation).
    pub(super) fn end_streams_of(&mut self, user: UserId, reason: CloseReason, now: Now) {
        let keys: Vec<u32> = self.registry.streams_of(user).to_vec();
        for key in keys {
            self.end_stream(key as usize, reason, now);
        }
    }

    /// Writes one notification to every open stream of its user, from one encoding.
    pub(super) fn fan_out(&mut self, note: &Notification, now: Now) {
        if self.registry.count(note.user) == 0 {
            return;
        }
        let mut frame = std::mem::take(&mut self.scratch_out);
        frame.clear();
        let inner = sse::encode_chunk(&mut frame, |o| {
            sse::encode_event(o, Some(note.id), "notification", &note.data)
        });
        let mut keys = std::mem::take(&mut self.fanout_keys);
        keys.clear();
        keys.extend_from_slice(self.registry.streams_of(note.user));
        for &key in &keys {
            let key = key as usize;
            let chunked = matches!(self.conns.get(key).map(|c| &c.phase), Some(Phase::Stream(s)) if s.chunked);
            let bytes = if chunked { &frame[..] } else { &frame[inner.clone()] };
            self.metrics.events_notification += 1;
            self.send(key, bytes, now);
        }
        self.fanout_keys = keys;
        self.scratch_out = frame;
    }
}
