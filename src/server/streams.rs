//! Event streams: opening one (head, `retry`, `connected`, replay or snapshot), heartbeats,
//! and fan-out of a notification to every stream of its user. Ending a stream (its last
//! chunk) is `Verdict::Finish`, carried out in `verdict.rs`.
//!
//! Every frame is encoded once as an HTTP chunk; HTTP/1.0 streams get the same bytes without
//! the chunk framing.

use super::ctx::{Ctx, Now};
use super::head::{self, Framing};
use super::output;
use super::requests::{self, Reply};
use super::verdict::{self, Verdict};
use crate::api::{self, Resume, StreamStart};
use crate::conn::{Conn, Phase, StreamState};
use crate::domain::UserId;
use crate::http::Request;
use crate::jwt;
use crate::key::{ConnKey, SlabKey};
use crate::metrics::CloseReason;
use crate::sse;
use crate::writes::Notification;
use slab::Slab;

pub(super) fn start(
    conn: &mut Conn,
    key: ConnKey,
    ctx: &mut Ctx,
    request: &Request<'_>,
    start: StreamStart,
    reply: &Reply,
    now: Now,
) -> Verdict {
    let chunked = !request.http10;
    let mut out = std::mem::take(&mut ctx.scratch_out);
    out.clear();
    let cache = if reply.token_in_query { &b"no-cache, no-store"[..] } else { b"no-cache" };
    let fields: [(&str, &[u8]); 3] = [
        ("Content-Type", b"text/event-stream"),
        ("Cache-Control", cache),
        ("X-Accel-Buffering", b"no"),
    ];
    let date = ctx.date();
    head::write_head(&mut out, 200, date, &fields, reply.cors(ctx), Framing::Stream { chunked });
    if reply.head_only {
        // HEAD: the stream's head and nothing else; the connection ends as a stream's would.
        ctx.metrics.count_request(reply.route, 200);
        requests::log_access(ctx, reply, 200, out.len());
        let sent = output::send(conn, ctx, &out, now);
        ctx.scratch_out = out;
        return match sent {
            Ok(()) => Verdict::Finish(CloseReason::Finished),
            Err(reason) => Verdict::Close(reason),
        };
    }
    let events = match encode_opening(ctx, &mut out, &start, chunked, now) {
        Ok((events, last_sent)) => {
            if ctx.feed.is_some() {
                // Ids after what the opening sent come live (or from a catch-up).
                let last = match last_sent {
                    Some(id) => Ok(id),
                    None => ctx.store.last_notification_id(start.user),
                };
                let mark = ctx.feed.as_ref().and_then(|f| f.mark(start.user));
                let last = last.unwrap_or(0).min(mark.unwrap_or(u64::MAX));
                if let Some(feed) = ctx.feed.as_mut() {
                    feed.track(start.user, last);
                }
            }
            events
        }
        Err(e) => {
            ctx.scratch_out = out;
            let reply = Reply { keep_alive: false, ..reply.clone() };
            return requests::respond(conn, key, ctx, &api::storage_error(e), &reply, now);
        }
    };
    let lifetime_ms = (start.expires_at.saturating_add(jwt::LEEWAY_SECS))
        .saturating_mul(1000)
        .saturating_sub(now.epoch_ms)
        .max(0) as u64;
    let stream = StreamState::new(
        start.user,
        now.mono_ms.saturating_add(lifetime_ms),
        now.mono_ms + ctx.config.heartbeat_secs * 1000,
        chunked,
    );
    let deadline = stream.deadline_ms(now.mono_ms);
    conn.start_streaming(stream);
    let open = ctx.registry.add(start.user, key.index());
    ctx.wheel.schedule(key, deadline);
    ctx.metrics.streams_started += 1;
    ctx.metrics.count_request(reply.route, 200);
    ctx.metrics.events_connected += 1;
    ctx.metrics.events_notification += events;
    log::info!("SSE client connected for user {} ({} open)", start.user, open);
    requests::log_access(ctx, reply, 200, out.len());
    // The opening counts toward the slow-consumer limit like everything else (SPEC §5): a
    // full replay of the kept notifications is about 200 KiB, under the 256 KiB limit.
    let sent = output::send(conn, ctx, &out, now);
    ctx.scratch_out = out;
    match sent {
        Ok(()) => Verdict::Continue,
        Err(reason) => Verdict::Close(reason),
    }
}

/// `retry:`, `connected`, then the missed notifications or the current status; how many
/// notifications, and the last id sent. In cluster mode, when the user already streams here,
/// nothing above the id their streams were last pushed is sent: those ids come live, to
/// every stream at once.
fn encode_opening(
    ctx: &Ctx,
    out: &mut Vec<u8>,
    start: &StreamStart,
    chunked: bool,
    now: Now,
) -> Result<(u64, Option<u64>), crate::store::StoreError> {
    let retry_ms = ctx.config.retry_ms;
    let mut notifications = 0;
    let mut last_sent = None;
    let ceiling = ctx.feed.as_ref().and_then(|f| f.mark(start.user)).unwrap_or(u64::MAX);
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
            ctx.store.notifications_after(start.user, last, |id, data| {
                if id > ceiling {
                    return;
                }
                notifications += 1;
                last_sent = Some(id);
                frame(out, &mut |o| sse::encode_event(o, Some(id), "notification", data));
            })?;
            last_sent = last_sent.or(Some(last));
        }
        Resume::Snapshot => {
            if let Some(status) = ctx.store.active_status(start.user, now.epoch_ms)? {
                let id = ctx.store.last_notification_id(start.user)?;
                if id <= ceiling {
                    let mut data = String::with_capacity(256);
                    status.write_notification_json(start.user, now.epoch_ms, &mut data);
                    notifications += 1;
                    last_sent = Some(id);
                    frame(out, &mut |o| sse::encode_event(o, Some(id), "notification", &data));
                }
            }
        }
    }
    Ok((notifications, last_sent))
}

/// A notification committed by this node or heard from the feed: pushed once, in id order,
/// to this node's streams of its user; a skipped id asks for a catch-up instead.
pub(super) fn offer(conns: &mut Slab<Conn>, ctx: &mut Ctx, note: &Notification, now: Now) {
    use super::feed::Offer;
    let offer = match ctx.feed.as_mut() {
        Some(feed) => feed.offer(note.user, note.id),
        None => Offer::Push,
    };
    match offer {
        Offer::Push => fan_out(conns, ctx, note, now),
        Offer::Drop => {}
        Offer::CatchUp { after } => ctx.catch_ups_wanted.push((note.user, after)),
    }
}

/// A stream's one deadline passed: its token expired, or a heartbeat is due.
pub(super) fn on_timer(conn: &mut Conn, key: ConnKey, ctx: &mut Ctx, now: Now) -> Verdict {
    let Phase::Stream(stream) = &conn.phase else {
        return Verdict::Continue;
    };
    if now.mono_ms >= stream.expires_at_ms {
        return Verdict::Finish(CloseReason::Expired);
    }
    if stream.heartbeat_due(now.mono_ms) {
        let chunked = stream.chunked;
        let epoch_ms = now.epoch_ms;
        if !matches!(&ctx.heartbeat_frame, Some((at, ..)) if *at == epoch_ms) {
            let mut frame = Vec::with_capacity(64);
            let inner = sse::encode_chunk(&mut frame, |o| sse::encode_heartbeat(o, epoch_ms));
            ctx.heartbeat_frame = Some((epoch_ms, frame, inner));
        }
        if let Some((at, frame, inner)) = ctx.heartbeat_frame.take() {
            let bytes = if chunked { &frame[..] } else { &frame[inner.clone()] };
            ctx.metrics.events_heartbeat += 1;
            let sent = output::send(conn, ctx, bytes, now);
            ctx.heartbeat_frame = Some((at, frame, inner));
            if let Err(reason) = sent {
                return Verdict::Close(reason);
            }
        }
    }
    let period = ctx.config.heartbeat_secs * 1000;
    let Phase::Stream(stream) = &mut conn.phase else {
        return Verdict::Continue;
    };
    stream.advance_heartbeat(now.mono_ms, period);
    let deadline = stream.deadline_ms(now.mono_ms);
    ctx.wheel.schedule(key, deadline);
    match output::check_backlog(conn, now) {
        Ok(()) => Verdict::Continue,
        Err(reason) => Verdict::Close(reason),
    }
}

/// The live stream at `key`, if the slab still holds that connection and it still streams.
fn live_stream(conns: &mut Slab<Conn>, index: u32, user: UserId) -> Option<(ConnKey, &mut Conn)> {
    let conn = conns.get_mut(index as usize)?;
    let live = conn.doomed.is_none() && matches!(&conn.phase, Phase::Stream(s) if s.user == user);
    live.then(|| (ConnKey::new(index as usize, conn.gen), conn))
}

/// Ends every open stream of `user` (deactivation).
pub(super) fn end_streams_of(
    conns: &mut Slab<Conn>,
    ctx: &mut Ctx,
    user: UserId,
    reason: CloseReason,
    now: Now,
) {
    let mut keys = std::mem::take(&mut ctx.fanout_keys);
    keys.clear();
    keys.extend_from_slice(ctx.registry.streams_of(user));
    for &index in &keys {
        if let Some((key, conn)) = live_stream(conns, index, user) {
            verdict::carry_out(conn, key, ctx, Verdict::Finish(reason), now);
        }
    }
    ctx.fanout_keys = keys;
}

/// Writes one notification to every open stream of its user, from one encoding.
pub(super) fn fan_out(conns: &mut Slab<Conn>, ctx: &mut Ctx, note: &Notification, now: Now) {
    if ctx.registry.count(note.user) == 0 {
        return;
    }
    let mut frame = std::mem::take(&mut ctx.scratch_out);
    frame.clear();
    let inner = sse::encode_chunk(&mut frame, |o| {
        sse::encode_event(o, Some(note.id), "notification", &note.data)
    });
    let mut keys = std::mem::take(&mut ctx.fanout_keys);
    keys.clear();
    keys.extend_from_slice(ctx.registry.streams_of(note.user));
    for &index in &keys {
        // A stream that ended this turn is still registered until the reap: skip it.
        let Some((key, conn)) = live_stream(conns, index, note.user) else {
            continue;
        };
        let chunked = matches!(&conn.phase, Phase::Stream(s) if s.chunked);
        let bytes = if chunked { &frame[..] } else { &frame[inner.clone()] };
        ctx.metrics.events_notification += 1;
        if let Err(reason) = output::send(conn, ctx, bytes, now) {
            verdict::carry_out(conn, key, ctx, Verdict::Close(reason), now);
        }
    }
    ctx.fanout_keys = keys;
    ctx.scratch_out = frame;
}
