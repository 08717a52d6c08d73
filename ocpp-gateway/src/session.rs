//! One charge point's WebSocket session: answers its CALLs, makes the CSMS's calls to
//! it one at a time (each with a timeout), and keeps its station status on the broker.
//!
//! One task per session owns the socket; the MQTT side reaches it through a channel
//! ([`Command`]). Nothing a charger sends ends the session except closing it (or an
//! oversized message, which the WebSocket layer refuses by closing).

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::ws::{Message, WebSocket};
use chrono::{DateTime, Utc};
use protocol::{StationReservationEvent, StationReservationEventKind, topics};
use rust_ocpp::v1_6::messages::authorize::{AuthorizeRequest, AuthorizeResponse};
use rust_ocpp::v1_6::messages::boot_notification::{
    BootNotificationRequest, BootNotificationResponse,
};
use rust_ocpp::v1_6::messages::cancel_reservation::{
    CancelReservationRequest, CancelReservationResponse,
};
use rust_ocpp::v1_6::messages::data_transfer::{DataTransferRequest, DataTransferResponse};
use rust_ocpp::v1_6::messages::get_configuration::{
    GetConfigurationRequest, GetConfigurationResponse,
};
use rust_ocpp::v1_6::messages::heart_beat::{HeartbeatRequest, HeartbeatResponse};
use rust_ocpp::v1_6::messages::meter_values::{MeterValuesRequest, MeterValuesResponse};
use rust_ocpp::v1_6::messages::reserve_now::{ReserveNowRequest, ReserveNowResponse};
use rust_ocpp::v1_6::messages::start_transaction::{
    StartTransactionRequest, StartTransactionResponse,
};
use rust_ocpp::v1_6::messages::status_notification::{
    StatusNotificationRequest, StatusNotificationResponse,
};
use rust_ocpp::v1_6::messages::stop_transaction::{
    StopTransactionRequest, StopTransactionResponse,
};
use rust_ocpp::v1_6::messages::trigger_message::{TriggerMessageRequest, TriggerMessageResponse};
use rust_ocpp::v1_6::types::{
    AuthorizationStatus, ChargePointStatus, DataTransferStatus, IdTagInfo, MessageTrigger,
    RegistrationStatus, ReservationStatus,
};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::config::AuthorizeRule;
use crate::frame::{self, ErrorCode, Frame};
use crate::metrics::Label;
use crate::status::{self, Connectors};
use crate::waiting::{Put, Waiting, WaitingQueue};
use crate::{Held, Shared};

/// What the MQTT side asks of a session.
#[derive(Debug)]
pub enum Command {
    /// Send ReserveNow for the fog's reservation (when a connector is free: they wait
    /// in order of `start_ms`), or update the reservation of that id.
    Reserve {
        fog_id: String,
        id_tag: String,
        expires_ms: u64,
        start_ms: Option<u64>,
    },
    /// Send CancelReservation (if the charger was told).
    Cancel { fog_id: String },
    /// Another connection took over this charge point id.
    Replaced,
}

/// A call to the charger, queued or outstanding.
#[derive(Debug, Clone)]
enum Purpose {
    Trigger,
    Configuration,
    /// `update`: the charger holds the reservation already and this ReserveNow
    /// replaces it (same reservationId, OCPP 1.6 §5.13).
    Reserve {
        fog_id: String,
        update: bool,
    },
    Cancel,
}

#[derive(Debug)]
struct Outgoing {
    action: &'static str,
    payload: Value,
    purpose: Purpose,
}

#[derive(Debug)]
struct Pending {
    id: String,
    action: &'static str,
    purpose: Purpose,
    deadline: Instant,
}

/// The state of one session (no I/O: frames in, frames out).
pub struct Session {
    shared: Arc<Shared>,
    pub charger_id: String,
    connectors: Connectors,
    reserve_connector_zero: bool,
    queue: VecDeque<Outgoing>,
    pending: Option<Pending>,
    call_seq: u64,
    last_seen: Instant,
    /// The station is published offline (heartbeat missed) until the charger speaks.
    silent: bool,
    /// A charger this gateway has not seen before that does not boot by then is
    /// resuming a boot made with an earlier gateway (it restarted, or another
    /// replica): it is then asked for its statuses.
    resync_at: Option<Instant>,
    /// Reservations the fog made for later while every connector is busy: ReserveNow
    /// would hold a connector from now on (or be answered Occupied), so each waits
    /// until a connector is free, served in the order the fog planned them, and
    /// lapses at its expiry.
    waiting: WaitingQueue,
    /// Frames to send, in order.
    out: Vec<String>,
}

/// How long a charger new to this gateway has to send BootNotification before it is
/// taken to be resuming an earlier boot (and sent TriggerMessage(StatusNotification)).
const BOOT_GRACE: Duration = Duration::from_secs(2);

impl Session {
    pub fn new(shared: Arc<Shared>, charger_id: String, reconnect: bool) -> Self {
        let n = shared
            .registry()
            .get(&charger_id)
            .map_or(1, |c| c.connectors);
        let mut s = Self {
            shared,
            charger_id,
            connectors: Connectors::new(n),
            reserve_connector_zero: false,
            queue: VecDeque::new(),
            pending: None,
            call_seq: 0,
            last_seen: Instant::now(),
            silent: false,
            resync_at: None,
            waiting: WaitingQueue::default(),
            out: Vec::new(),
        };
        if reconnect {
            // The charger was here before: ask it for every connector's status now.
            s.enqueue_trigger();
        } else {
            s.resync_at = Some(Instant::now() + BOOT_GRACE);
        }
        s
    }

    fn enqueue_trigger(&mut self) {
        let req = TriggerMessageRequest {
            requested_message: MessageTrigger::StatusNotification,
            connector_id: None,
        };
        self.queue.push_back(Outgoing {
            action: "TriggerMessage",
            payload: to_value(&req),
            purpose: Purpose::Trigger,
        });
    }

    /// Takes the frames to send.
    pub fn take_out(&mut self) -> Vec<String> {
        self.pump();
        std::mem::take(&mut self.out)
    }

    /// Sends the next queued call when none is outstanding.
    fn pump(&mut self) {
        if self.pending.is_some() {
            return;
        }
        let Some(next) = self.queue.pop_front() else {
            return;
        };
        self.call_seq += 1;
        let id = format!("gw-{}", self.call_seq);
        self.out.push(frame::call(&id, next.action, &next.payload));
        self.pending = Some(Pending {
            id,
            action: next.action,
            purpose: next.purpose,
            deadline: Instant::now() + self.shared.settings.call_timeout,
        });
    }

    /// One text frame from the charger.
    pub fn on_text(&mut self, text: &str) {
        self.heard();
        match frame::parse(text) {
            Ok(Frame::Call {
                id,
                action,
                payload,
            }) => {
                self.shared
                    .metrics
                    .calls
                    .get_or_create(&Label::of(known_action(&action)))
                    .inc();
                let answer = match self.on_call(&action, payload) {
                    Ok(result) => frame::call_result(&id, &result),
                    Err((code, why)) => {
                        debug!(charger = %self.charger_id, action, code = code.as_str(), why, "CALLERROR");
                        self.count_error(code);
                        frame::call_error(&id, code, &why)
                    }
                };
                self.out.push(answer);
            }
            Ok(Frame::CallResult { id, payload }) => match self.take_pending(&id) {
                Some(p) => self.on_result(p, payload),
                None => {
                    warn!(charger = %self.charger_id, id, "CALLRESULT for no outstanding call ignored")
                }
            },
            Ok(Frame::CallError {
                id,
                code,
                description,
            }) => match self.take_pending(&id) {
                Some(p) => self.on_call_error(p, &code, &description),
                None => {
                    warn!(charger = %self.charger_id, id, "CALLERROR for no outstanding call ignored")
                }
            },
            Err(bad) => {
                warn!(charger = %self.charger_id, code = bad.code.as_str(), why = %bad.description, "malformed frame");
                self.count_error(bad.code);
                self.out.push(bad.to_text());
            }
        }
    }

    /// A binary frame: OCPP-J is text only.
    pub fn on_binary(&mut self) {
        self.heard();
        self.count_error(ErrorCode::FormationViolation);
        self.out.push(frame::call_error(
            "-1",
            ErrorCode::FormationViolation,
            "OCPP-J messages are text frames",
        ));
    }

    fn count_error(&self, code: ErrorCode) {
        self.shared
            .metrics
            .call_errors
            .get_or_create(&Label::of(code.as_str()))
            .inc();
    }

    fn heard(&mut self) {
        self.last_seen = Instant::now();
        if self.silent {
            self.silent = false;
            info!(charger = %self.charger_id, "charger speaks again");
            self.publish_status();
        }
    }

    fn take_pending(&mut self, id: &str) -> Option<Pending> {
        if self.pending.as_ref().is_some_and(|p| p.id == id) {
            self.pending.take()
        } else {
            None
        }
    }

    /// Periodically: call timeouts and heartbeat silence.
    pub fn on_tick(&mut self) {
        if self.resync_at.is_some_and(|t| t <= Instant::now()) {
            self.resync_at = None;
            info!(charger = %self.charger_id, "connected without booting: asking for its statuses");
            self.enqueue_trigger();
        }
        if self
            .pending
            .as_ref()
            .is_some_and(|p| p.deadline <= Instant::now())
        {
            if let Some(p) = self.pending.take() {
                warn!(charger = %self.charger_id, action = p.action, "call not answered in time");
                self.shared.metrics.call_timeouts.inc();
                if let Purpose::Reserve { fog_id, update } = p.purpose {
                    self.shared
                        .metrics
                        .reservations
                        .get_or_create(&Label::of("timed_out"))
                        .inc();
                    self.reserve_refused(
                        &fog_id,
                        update,
                        "the charger did not answer ReserveNow in time",
                    );
                }
            }
        }
        if !self.silent && self.last_seen.elapsed() >= self.shared.settings.heartbeat * 2 {
            warn!(charger = %self.charger_id, "no message for twice the heartbeat interval: offline");
            self.silent = true;
            self.publish_offline();
        }
    }

    /// The answer to a CALL from the charger.
    fn on_call(&mut self, action: &str, payload: Value) -> Result<Value, (ErrorCode, String)> {
        let now = Utc::now();
        match action {
            "BootNotification" => {
                let req: BootNotificationRequest = checked(payload)?;
                self.resync_at = None;
                info!(charger = %self.charger_id, vendor = %req.charge_point_vendor, model = %req.charge_point_model, "boot");
                // Whether ReserveNow may use connector 0.
                self.queue.push_back(Outgoing {
                    action: "GetConfiguration",
                    payload: to_value(&GetConfigurationRequest {
                        key: Some(vec!["ReserveConnectorZeroSupported".into()]),
                    }),
                    purpose: Purpose::Configuration,
                });
                Ok(to_value(&BootNotificationResponse {
                    current_time: now,
                    interval: self.shared.settings.heartbeat.as_secs() as u32,
                    status: RegistrationStatus::Accepted,
                }))
            }
            "Heartbeat" => {
                let _: HeartbeatRequest = checked(payload)?;
                Ok(to_value(&HeartbeatResponse { current_time: now }))
            }
            "StatusNotification" => {
                let req: StatusNotificationRequest = checked(payload)?;
                if !self.connectors.set(req.connector_id, req.status.clone()) {
                    return Err((
                        ErrorCode::PropertyConstraintViolation,
                        format!(
                            "connector {} is not one of this charger's (see the chargers file)",
                            req.connector_id
                        ),
                    ));
                }
                debug!(charger = %self.charger_id, connector = req.connector_id, status = ?req.status, "status");
                self.publish_status();
                self.reserve_waiting();
                Ok(to_value(&StatusNotificationResponse {}))
            }
            "Authorize" => {
                let req: AuthorizeRequest = checked(payload)?;
                Ok(to_value(&AuthorizeResponse {
                    id_tag_info: self.id_tag_info(&req.id_tag),
                }))
            }
            "StartTransaction" => {
                let req: StartTransactionRequest = checked(payload)?;
                let transaction_id = self.shared.next_transaction();
                info!(charger = %self.charger_id, connector = req.connector_id, transaction_id, reservation = ?req.reservation_id, "transaction started");
                let id_tag_info = self.id_tag_info(&req.id_tag);
                self.arrived(req.reservation_id, &req.id_tag);
                Ok(to_value(&StartTransactionResponse {
                    id_tag_info,
                    transaction_id,
                }))
            }
            "StopTransaction" => {
                let req: StopTransactionRequest = checked(payload)?;
                info!(charger = %self.charger_id, transaction_id = req.transaction_id, "transaction stopped");
                Ok(to_value(&StopTransactionResponse {
                    id_tag_info: req.id_tag.as_deref().map(|t| self.id_tag_info(t)),
                }))
            }
            "MeterValues" => {
                let _: MeterValuesRequest = decode(payload)?;
                Ok(to_value(&MeterValuesResponse {}))
            }
            "DataTransfer" => {
                let _: DataTransferRequest = checked(payload)?;
                Ok(to_value(&DataTransferResponse {
                    status: DataTransferStatus::UnknownVendorId,
                    data: None,
                }))
            }
            other => Err((
                ErrorCode::NotImplemented,
                format!("{} is not implemented by this CSMS", short(other)),
            )),
        }
    }

    fn id_tag_info(&self, id_tag: &str) -> IdTagInfo {
        let accepted = match self.shared.settings.authorize {
            AuthorizeRule::Accept => true,
            AuthorizeRule::Reserved => self
                .shared
                .reservations()
                .values()
                .any(|h| h.charger == self.charger_id && h.id_tag == id_tag),
        };
        IdTagInfo {
            expiry_date: None,
            parent_id_tag: None,
            status: if accepted {
                AuthorizationStatus::Accepted
            } else {
                AuthorizationStatus::Invalid
            },
        }
    }

    /// A transaction started: on a reservation (its id, or the id tag holding one
    /// here), which therefore ends as arrived.
    fn arrived(&mut self, reservation_id: Option<i32>, id_tag: &str) {
        let fog_id = {
            let mut held = self.shared.reservations();
            let found = held
                .iter()
                .find(|(_, h)| {
                    h.charger == self.charger_id
                        && (Some(h.ocpp_id) == reservation_id
                            || (reservation_id.is_none() && h.id_tag == id_tag))
                })
                .map(|(id, _)| id.clone());
            if let Some(id) = &found {
                held.remove(id);
            }
            found
        };
        if let Some(id) = &fog_id {
            // An update not sent yet has nothing left to update.
            self.drop_queued_reserve(id);
        }
        // A vehicle whose reservation was still waiting for a connector took one.
        let fog_id = fog_id.or_else(|| {
            reservation_id
                .is_none()
                .then(|| self.waiting.remove_id_tag(id_tag))
                .flatten()
                .map(|w| w.fog_id)
        });
        if let Some(fog_id) = fog_id {
            info!(charger = %self.charger_id, reservation = %fog_id, "vehicle arrived on its reservation");
            self.shared
                .metrics
                .reservations
                .get_or_create(&Label::of("arrived"))
                .inc();
            self.event(&fog_id, StationReservationEventKind::Arrived, None);
        }
    }

    fn on_result(&mut self, p: Pending, payload: Value) {
        match p.purpose {
            Purpose::Trigger => match decode::<TriggerMessageResponse>(payload) {
                Ok(r) => {
                    debug!(charger = %self.charger_id, status = ?r.status, "TriggerMessage answered")
                }
                Err((_, why)) => {
                    warn!(charger = %self.charger_id, why, "bad TriggerMessage answer")
                }
            },
            Purpose::Configuration => match decode::<GetConfigurationResponse>(payload) {
                Ok(r) => {
                    self.reserve_connector_zero =
                        r.configuration_key.unwrap_or_default().iter().any(|k| {
                            k.key == "ReserveConnectorZeroSupported"
                                && k.value
                                    .as_deref()
                                    .is_some_and(|v| v.eq_ignore_ascii_case("true"))
                        });
                    debug!(charger = %self.charger_id, zero = self.reserve_connector_zero, "configuration");
                }
                Err((_, why)) => {
                    warn!(charger = %self.charger_id, why, "bad GetConfiguration answer")
                }
            },
            Purpose::Reserve { fog_id, update } => match decode::<ReserveNowResponse>(payload) {
                Ok(ReserveNowResponse {
                    status: ReservationStatus::Accepted,
                }) if update => {
                    // The fog heard `accepted` for the reservation already.
                    info!(charger = %self.charger_id, reservation = %fog_id, "ReserveNow (update) accepted");
                }
                Ok(ReserveNowResponse {
                    status: ReservationStatus::Accepted,
                }) => {
                    info!(charger = %self.charger_id, reservation = %fog_id, "ReserveNow accepted");
                    self.shared
                        .metrics
                        .reservations
                        .get_or_create(&Label::of("accepted"))
                        .inc();
                    self.event(&fog_id, StationReservationEventKind::Accepted, None);
                }
                Ok(ReserveNowResponse { status }) => {
                    let why = format!("{status:?}");
                    info!(charger = %self.charger_id, reservation = %fog_id, status = why, "ReserveNow refused");
                    self.shared
                        .metrics
                        .reservations
                        .get_or_create(&Label::of("rejected"))
                        .inc();
                    self.reserve_refused(&fog_id, update, &why);
                    self.reserve_waiting();
                }
                Err((_, why)) => {
                    self.shared
                        .metrics
                        .reservations
                        .get_or_create(&Label::of("rejected"))
                        .inc();
                    self.reserve_refused(&fog_id, update, &format!("bad ReserveNow answer: {why}"));
                }
            },
            Purpose::Cancel => match decode::<CancelReservationResponse>(payload) {
                Ok(r) => {
                    debug!(charger = %self.charger_id, status = ?r.status, "CancelReservation answered")
                }
                Err((_, why)) => {
                    warn!(charger = %self.charger_id, why, "bad CancelReservation answer")
                }
            },
        }
    }

    fn on_call_error(&mut self, p: Pending, code: &str, description: &str) {
        warn!(charger = %self.charger_id, action = p.action, code = short(code), description = short(description), "charger answered CALLERROR");
        if let Purpose::Reserve { fog_id, update } = p.purpose {
            self.shared
                .metrics
                .reservations
                .get_or_create(&Label::of("rejected"))
                .inc();
            self.reserve_refused(&fog_id, update, &format!("CALLERROR {}", short(code)));
        }
    }

    /// A ReserveNow was refused (or not answered). The reservation is over; when it
    /// was an update, the charger may still hold the earlier version: it is cancelled
    /// there, so that no connector stays held for a slot the fog releases.
    fn reserve_refused(&mut self, fog_id: &str, update: bool, why: &str) {
        match self.reservation_failed(fog_id) {
            Some(held) if update => self.queue.push_back(Outgoing {
                action: "CancelReservation",
                payload: to_value(&CancelReservationRequest {
                    reservation_id: held.ocpp_id,
                }),
                purpose: Purpose::Cancel,
            }),
            _ => {}
        }
        self.event(
            fog_id,
            StationReservationEventKind::Rejected,
            Some(why.to_owned()),
        );
    }

    /// The charger will not hold the reservation: forget it (and an update of it not
    /// sent yet).
    fn reservation_failed(&mut self, fog_id: &str) -> Option<Held> {
        self.drop_queued_reserve(fog_id);
        self.shared.reservations().remove(fog_id)
    }

    /// Drops the ReserveNow for `fog_id` still queued, if any: `Some(update)` says
    /// whether it was an update (the charger holds an earlier version) or the first
    /// (the charger never heard of the reservation).
    fn drop_queued_reserve(&mut self, fog_id: &str) -> Option<bool> {
        let i = self.queue.iter().position(
            |o| matches!(&o.purpose, Purpose::Reserve { fog_id: f, .. } if f == fog_id),
        )?;
        match self.queue.remove(i)?.purpose {
            Purpose::Reserve { update, .. } => Some(update),
            _ => None,
        }
    }

    /// Sends ReserveNow for the reservations waiting for a connector, in the order
    /// the fog planned them, while one is free; those whose expiry passed lapse (the
    /// fog ends them too).
    fn reserve_waiting(&mut self) {
        for w in self.waiting.lapse(now_ms()) {
            debug!(charger = %self.charger_id, reservation = %w.fog_id, "waiting reservation lapsed");
        }
        while let Some(connector) = self.free_connector() {
            let Some(w) = self.waiting.pop_next() else {
                break;
            };
            info!(charger = %self.charger_id, reservation = %w.fog_id, start_ms = ?w.start_ms, "a connector is free: reserving it");
            self.reserve(w, connector);
        }
    }

    /// The connector a ReserveNow would hold now (0 when the charger reserves
    /// connector 0), if one is Available and not held for another reservation.
    fn free_connector(&self) -> Option<u32> {
        let held: Vec<u32> = self
            .shared
            .reservations()
            .values()
            .filter(|h| h.charger == self.charger_id)
            .map(|h| h.connector)
            .collect();
        let mut free = self
            .connectors
            .connectors()
            .filter(|(_, s)| matches!(s, None | Some(ChargePointStatus::Available)));
        if self.reserve_connector_zero {
            (free.count() > held.len()).then_some(0)
        } else {
            free.find(|(id, _)| !held.contains(id)).map(|(id, _)| id)
        }
    }

    fn event(&self, fog_id: &str, event: StationReservationEventKind, reason: Option<String>) {
        publish_event(&self.shared, &self.charger_id, fog_id, event, reason);
    }

    /// What the MQTT side asked.
    pub fn on_command(&mut self, command: Command) -> bool {
        match command {
            Command::Reserve {
                fog_id,
                id_tag,
                expires_ms,
                start_ms,
            } => self.on_reserve(Waiting {
                fog_id,
                id_tag,
                expires_ms,
                start_ms,
            }),
            Command::Cancel { fog_id } => {
                if self.waiting.remove(&fog_id).is_some() {
                    self.shared
                        .metrics
                        .reservations
                        .get_or_create(&Label::of("cancelled"))
                        .inc();
                    return true;
                }
                let held = self.shared.reservations().remove(&fog_id);
                // Not sent yet: just drop it. The charger heard of it unless what was
                // dropped was its first ReserveNow.
                let told = self.drop_queued_reserve(&fog_id) != Some(false);
                if let Some(h) = held {
                    self.shared
                        .metrics
                        .reservations
                        .get_or_create(&Label::of("cancelled"))
                        .inc();
                    if told {
                        self.queue.push_back(Outgoing {
                            action: "CancelReservation",
                            payload: to_value(&CancelReservationRequest {
                                reservation_id: h.ocpp_id,
                            }),
                            purpose: Purpose::Cancel,
                        });
                    }
                }
                // Its connector may serve a waiting reservation now.
                self.reserve_waiting();
            }
            Command::Replaced => return false,
        }
        true
    }

    /// A `reserve` from the fog: a new reservation, or one the gateway has (waiting or
    /// placed on the charger) updated. An identical repeat (a redelivery) changes
    /// nothing.
    fn on_reserve(&mut self, r: Waiting) {
        let held = self.shared.reservations().get(&r.fog_id).cloned();
        if let Some(held) = held {
            self.update_held(held, r);
            return;
        }
        if self.waiting.contains(&r.fog_id) {
            let fog_id = r.fog_id.clone();
            match self.waiting.put(r) {
                Put::Unchanged => {
                    debug!(charger = %self.charger_id, reservation = %fog_id, "reservation already waiting (redelivered)");
                }
                _ => {
                    info!(charger = %self.charger_id, reservation = %fog_id, "waiting reservation updated: its place in the order is its new start");
                    self.count_updated();
                    // A new expiry may have passed already.
                    self.reserve_waiting();
                }
            }
            return;
        }
        if let Some(connector) = self.free_connector() {
            self.reserve(r, connector);
            return;
        }
        if r.expires_ms <= now_ms() {
            self.event(
                &r.fog_id,
                StationReservationEventKind::Rejected,
                Some("the reservation expired before a connector was free".into()),
            );
            return;
        }
        // Every connector is busy now: the fog's slot is for later.
        info!(charger = %self.charger_id, reservation = %r.fog_id, start_ms = ?r.start_ms, "no connector free yet: the reservation waits for one");
        self.shared
            .metrics
            .reservations
            .get_or_create(&Label::of("waiting"))
            .inc();
        self.waiting.put(r);
    }

    /// A `reserve` for a reservation placed on a charger already: a new expiry (or id
    /// tag) is sent as ReserveNow with the same reservationId, which replaces it
    /// there (OCPP 1.6 §5.13). Its start no longer matters: it holds a connector.
    fn update_held(&mut self, mut held: Held, r: Waiting) {
        if held.charger != self.charger_id {
            warn!(charger = %self.charger_id, reservation = %r.fog_id, held_at = %held.charger, "reservation held at another charger: ignored");
            return;
        }
        if held.expires_ms == r.expires_ms && held.id_tag == r.id_tag {
            debug!(charger = %self.charger_id, reservation = %r.fog_id, "reservation already held (redelivered)");
            return;
        }
        let Some(payload) = reserve_now(&held, &r) else {
            warn!(charger = %self.charger_id, reservation = %r.fog_id, expires_ms = r.expires_ms, "update with an expiry out of range ignored");
            return;
        };
        info!(charger = %self.charger_id, reservation = %r.fog_id, "held reservation updated: ReserveNow replaces it");
        self.count_updated();
        held.expires_ms = r.expires_ms;
        held.id_tag = r.id_tag;
        self.shared.reservations().insert(r.fog_id.clone(), held);
        let queued = self
            .queue
            .iter_mut()
            .find(|o| matches!(&o.purpose, Purpose::Reserve { fog_id, .. } if *fog_id == r.fog_id));
        match queued {
            // Not sent yet: it goes out as updated.
            Some(o) => o.payload = payload,
            None => self.queue.push_back(Outgoing {
                action: "ReserveNow",
                payload,
                purpose: Purpose::Reserve {
                    fog_id: r.fog_id,
                    update: true,
                },
            }),
        }
    }

    fn count_updated(&self) {
        self.shared
            .metrics
            .reservations
            .get_or_create(&Label::of("updated"))
            .inc();
    }

    /// Places a reservation on a free connector: ReserveNow.
    fn reserve(&mut self, r: Waiting, connector: u32) {
        let held = Held {
            charger: self.charger_id.clone(),
            ocpp_id: self.shared.next_reservation(),
            id_tag: r.id_tag.clone(),
            connector,
            expires_ms: r.expires_ms,
        };
        let Some(payload) = reserve_now(&held, &r) else {
            self.event(
                &r.fog_id,
                StationReservationEventKind::Rejected,
                Some("expiry out of range".into()),
            );
            return;
        };
        self.shared.reservations().insert(r.fog_id.clone(), held);
        self.queue.push_back(Outgoing {
            action: "ReserveNow",
            payload,
            purpose: Purpose::Reserve {
                fog_id: r.fog_id,
                update: false,
            },
        });
    }

    /// Publishes the station status (retained), if the charger has a location.
    fn publish_status(&mut self) {
        let registry = self.shared.registry();
        let Some(charger) = registry.get(&self.charger_id) else {
            debug!(charger = %self.charger_id, "not in the chargers file: no station published");
            return;
        };
        self.connectors.resize(charger.connectors);
        let s = status::station_status(charger, &self.connectors, now_ms());
        drop(registry);
        self.shared.publish_status(&s);
    }

    fn publish_offline(&self) {
        if self.shared.registry().get(&self.charger_id).is_some() {
            self.shared
                .publish_status(&status::offline(&self.charger_id, now_ms()));
        }
    }

    /// Reservations still queued or outstanding when the session ends are refused.
    fn close(&mut self) {
        let mut failed: Vec<String> = self
            .queue
            .drain(..)
            .filter_map(|o| match o.purpose {
                Purpose::Reserve { fog_id, .. } => Some(fog_id),
                _ => None,
            })
            .collect();
        failed.extend(self.waiting.drain().into_iter().map(|w| w.fog_id));
        if let Some(Pending {
            purpose: Purpose::Reserve { fog_id, .. },
            ..
        }) = self.pending.take()
        {
            failed.push(fog_id);
        }
        for fog_id in failed {
            self.reservation_failed(&fog_id);
            self.event(
                &fog_id,
                StationReservationEventKind::Rejected,
                Some("the charger disconnected".into()),
            );
        }
    }
}

/// Publishes a reservation event for the fog.
pub fn publish_event(
    shared: &Shared,
    charger_id: &str,
    fog_id: &str,
    event: StationReservationEventKind,
    reason: Option<String>,
) {
    let msg = StationReservationEvent {
        v: protocol::PROTOCOL_VERSION,
        reservation_id: fog_id.to_owned(),
        event,
        reason: reason.map(|r| r.chars().take(protocol::validate::MAX_REASON_LEN).collect()),
    };
    shared.publisher.publish(
        &topics::station_reservation_events(&shared.region, charger_id),
        &protocol::encode(&msg),
        1,
        false,
    );
}

/// Runs one session until the charger closes, another connection replaces it, or
/// the gateway stops.
pub async fn run(
    shared: Arc<Shared>,
    charger_id: String,
    mut socket: WebSocket,
    generation: u64,
    mut commands: mpsc::Receiver<Command>,
    reconnect: bool,
    shutdown: CancellationToken,
) {
    shared.metrics.connected.inc();
    info!(charger = %charger_id, reconnect, "charger connected");
    let mut session = Session::new(shared.clone(), charger_id.clone(), reconnect);
    let tick_every =
        (shared.settings.heartbeat / 4).clamp(Duration::from_millis(50), Duration::from_secs(1));
    let mut tick = tokio::time::interval(tick_every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let why = 'session: loop {
        for text in session.take_out() {
            if socket.send(Message::Text(text.into())).await.is_err() {
                break 'session "send failed";
            }
        }
        tokio::select! {
            _ = shutdown.cancelled() => {
                let _ = socket.send(Message::Close(None)).await;
                break "gateway stopping";
            }
            m = socket.recv() => match m {
                Some(Ok(Message::Text(t))) => session.on_text(t.as_str()),
                Some(Ok(Message::Binary(_))) => session.on_binary(),
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => session.heard(),
                Some(Ok(Message::Close(_))) | None => break "closed by the charger",
                Some(Err(e)) => {
                    warn!(charger = %charger_id, error = %e, "WebSocket error");
                    break "WebSocket error";
                }
            },
            c = commands.recv() => match c {
                Some(c) => {
                    if !session.on_command(c) {
                        let _ = socket.send(Message::Close(None)).await;
                        break "replaced by a new connection";
                    }
                }
                None => break "gateway stopping",
            },
            _ = tick.tick() => session.on_tick(),
        }
    };
    session.close();
    shared.metrics.connected.dec();
    // A newer connection of the same charger owns the status from now on.
    if shared.end_session(&charger_id, generation) {
        session.publish_offline();
    }
    info!(charger = %charger_id, why, "charger disconnected");
}

/// Decodes a payload, telling a missing field from a wrong type.
fn decode<T: DeserializeOwned>(payload: Value) -> Result<T, (ErrorCode, String)> {
    serde_json::from_value(payload).map_err(|e| {
        let why = e.to_string();
        let code = if why.starts_with("missing field") {
            ErrorCode::OccurenceConstraintViolation
        } else {
            ErrorCode::TypeConstraintViolation
        };
        (code, short(&why).to_owned())
    })
}

/// Decodes and checks the OCPP field constraints (string lengths, …).
fn checked<T: DeserializeOwned + validator::Validate>(
    payload: Value,
) -> Result<T, (ErrorCode, String)> {
    let value: T = decode(payload)?;
    value.validate().map_err(|e| {
        (
            ErrorCode::PropertyConstraintViolation,
            short(&e.to_string()).to_owned(),
        )
    })?;
    Ok(value)
}

/// The ReserveNow that places (or replaces) `r` as `held` on the charger; `None` for
/// an expiry no date can hold.
fn reserve_now(held: &Held, r: &Waiting) -> Option<Value> {
    let expiry_date = DateTime::<Utc>::from_timestamp_millis(i64::try_from(r.expires_ms).ok()?)?;
    Some(to_value(&ReserveNowRequest {
        connector_id: held.connector,
        expiry_date,
        id_tag: r.id_tag.clone(),
        parent_id_tag: None,
        reservation_id: held.ocpp_id,
    }))
}

fn to_value<T: Serialize>(v: &T) -> Value {
    serde_json::to_value(v).unwrap_or(Value::Null)
}

/// At most 200 bytes of what a charger sent, for logs and error descriptions.
fn short(s: &str) -> &str {
    let mut end = s.len().min(200);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// The action as a metric label: one of OCPP 1.6's charger → CSMS actions, or `other`.
fn known_action(action: &str) -> &'static str {
    const ACTIONS: [&str; 10] = [
        "Authorize",
        "BootNotification",
        "DataTransfer",
        "DiagnosticsStatusNotification",
        "FirmwareStatusNotification",
        "Heartbeat",
        "MeterValues",
        "StartTransaction",
        "StatusNotification",
        "StopTransaction",
    ];
    ACTIONS
        .into_iter()
        .find(|a| *a == action)
        .unwrap_or("other")
}

pub(crate) fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}
