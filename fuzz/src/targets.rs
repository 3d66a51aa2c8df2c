//! One harness per fuzz target. Each takes the fuzzer's bytes, drives proto, and panics when
//! proto panics or a property of the contract does not hold.

use agenix_proto::envelope::{
    ACTION_PAYLOAD_TYPE, CLOCK_SKEW_SECS, Envelope, EnvelopeSignature, MAX_ENVELOPE_BYTES,
    MAX_SIGNATURES, PLAN_PAYLOAD_TYPE,
};
use agenix_proto::wire::{ClientRole, Request, Response, decode_frame, encode_frame};
use agenix_proto::{Action, Digest, Form, Limits, Plan, VerifyError, verify_action, verify_plan};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;

use agenix_proto::plan::MAX_PLAN_BYTES;
use agenix_proto::wire::MAX_FRAME;

use crate::alloc::Limit;
use crate::fixtures::{self, NOW};

/// `plan`: [`Plan::from_json`], then [`Plan::validate`] in draft and signed form against the
/// absolute and the default ceilings; the same bytes as an action ([`Action::from_json`],
/// [`Action::validate`]).
///
/// Properties: a plan valid when signed is valid as a draft; a plan valid under the default
/// ceilings is valid under the absolute ones; whatever parses survives its own serialization
/// (`to_payload`, the bytes that get signed, parses back to the same value).
pub fn plan(data: &[u8]) {
    if let Ok(plan) = Plan::from_json(data) {
        let draft = plan.validate(Form::Draft, &Limits::ABSOLUTE);
        let signed = plan.validate(Form::Signed, &Limits::ABSOLUTE);
        let signed_default = plan.validate(Form::Signed, &Limits::DEFAULT);
        if signed.is_ok() {
            assert!(draft.is_ok(), "valid when signed but not as a draft: {draft:?}");
        }
        if signed_default.is_ok() {
            assert!(signed.is_ok(), "valid under default ceilings, not absolute: {signed:?}");
        }
        for result in [&draft, &signed, &signed_default] {
            if let Err(e) = result {
                assert!(!e.violations().is_empty(), "an Invalid with no violation");
                let _ = e.to_string();
            }
        }
        let payload = plan.to_payload();
        assert!(!payload.is_empty(), "a parsed plan serialized to nothing");
        match Plan::from_json(&payload) {
            Ok(back) => assert_eq!(back, plan, "a plan changed through to_payload"),
            Err(e) => panic!("a parsed plan's own payload does not parse: {e}"),
        }
    }
    if let Ok(action) = Action::from_json(data) {
        if let Err(e) = action.validate() {
            let _ = e.to_string();
        }
        match Action::from_json(&action.to_payload()) {
            Ok(back) => assert_eq!(back, action, "an action changed through to_payload"),
            Err(e) => panic!("a parsed action's own payload does not parse: {e}"),
        }
    }
}

/// `frame`: the input as a stream of frames, read with [`decode_frame`] as requests until
/// the first error, then from the start again as responses.
///
/// Property: every message read survives [`encode_frame`] and a second [`decode_frame`].
pub fn frame(data: &[u8]) {
    let mut stream = data;
    while let Ok((req, rest)) = decode_frame::<Request>(stream) {
        stream = rest;
        let _ = req.name();
        for role in ClientRole::ALL {
            let _ = req.allowed_for(role);
        }
        round_trip(&req);
    }
    let mut stream = data;
    while let Ok((resp, rest)) = decode_frame::<Response>(stream) {
        stream = rest;
        let _ = resp.name();
        round_trip(&resp);
    }
}

fn round_trip<T>(msg: &T)
where
    T: serde::Serialize + serde::de::DeserializeOwned + PartialEq + std::fmt::Debug,
{
    let out = match encode_frame(msg) {
        Ok(out) => out,
        Err(e) => panic!("a message read from a frame cannot be written: {e}"),
    };
    match decode_frame::<T>(&out) {
        Ok((back, rest)) => {
            assert_eq!(&back, msg, "a message changed through encode_frame");
            assert!(rest.is_empty(), "encode_frame wrote more than one frame");
        }
        Err(e) => panic!("a frame written from a message read back does not read: {e}"),
    }
}

/// `envelope`: the input as a plan envelope ([`verify_plan`]), as an action envelope
/// ([`verify_action`]) and as a signed result ([`agenix_proto::verify_result`]) against the
/// fixed trust file, clock and queue of [`fixtures`].
///
/// Properties: an envelope that parses survives `to_json` (when that is within the cap: it
/// is pretty-printed); one that verifies still verifies, to the same document, after
/// `Envelope::from_json` and `to_json`, which is what agq and agw do with the envelopes they
/// receive; a verified plan's digest is the sha256 of its payload and its plan is what that
/// payload parses to.
pub fn envelope(data: &[u8]) {
    let trust = fixtures::trust();
    let again = Envelope::from_json(data).ok().map(|env| {
        let json = env.to_json();
        if json.len() <= MAX_ENVELOPE_BYTES {
            match Envelope::from_json(&json) {
                Ok(back) => assert_eq!(back, env, "an envelope changed through to_json"),
                Err(e) => panic!("a parsed envelope's own JSON does not parse: {e}"),
            }
        }
        json
    });
    match verify_plan(data, trust, NOW, &Limits::ABSOLUTE) {
        Ok(v) => {
            check_verified_plan(&v);
            let again = again.as_deref().unwrap_or_default();
            match verify_plan(again, trust, NOW, &Limits::ABSOLUTE) {
                Ok(w) => assert_eq!((w.plan(), w.digest()), (v.plan(), v.digest())),
                Err(e) => panic!("a verified plan envelope fails after to_json: {e}"),
            }
        }
        Err(e) => {
            let _ = e.to_string();
        }
    }
    match verify_action(data, trust, NOW, &fixtures::audience()) {
        Ok(v) => {
            assert!(v.action().validate().is_ok());
            assert_eq!(Action::from_json(v.payload()).ok().as_ref(), Some(v.action()));
            let again = again.as_deref().unwrap_or_default();
            match verify_action(again, trust, NOW, &fixtures::audience()) {
                Ok(w) => assert_eq!(w.action(), v.action()),
                Err(e) => panic!("a verified action envelope fails after to_json: {e}"),
            }
        }
        Err(e) => {
            let _ = e.to_string();
        }
    }
    match agenix_proto::verify_result(data, trust, NOW) {
        Ok(v) => {
            assert!(v.statement().validate().is_ok());
            assert_eq!(v.statement().worker, v.signer(), "a result names another worker");
            let again = again.as_deref().unwrap_or_default();
            match agenix_proto::verify_result(again, trust, NOW) {
                Ok(w) => assert_eq!(w.statement(), v.statement()),
                Err(e) => panic!("a verified result envelope fails after to_json: {e}"),
            }
        }
        Err(e) => {
            let _ = e.to_string();
        }
    }
}

fn check_verified_plan(v: &agenix_proto::VerifiedPlan) {
    assert_eq!(v.digest(), Digest::of(v.payload()), "digest is not of the payload");
    assert_eq!(Plan::from_json(v.payload()).ok().as_ref(), Some(v.plan()));
    assert!(v.plan().validate(Form::Signed, &Limits::ABSOLUTE).is_ok());
}

/// How `envelope_signed` reads its input: a fixed header, then the payload.
///
/// | byte | meaning (all zero: a clean envelope by the trusted signer, verified at `NOW`) |
/// |------|-------------------------------------------------------------------------------|
/// | 0    | even: a plan (`verify_plan`); odd: an action (`verify_action`)                 |
/// | 1    | signer, mod 4: 0 trusted, 1 a key nobody trusts, 2 a revoked key that was never |
/// |      | trusted, 3 the trusted signer in a trust file that has since revoked it         |
/// | 2    | payload type, mod 4: 0 right, 1 the other kind's, 2 empty, 3 right plus a space |
/// | 3    | signatures: `(b + 1) % 20` copies of the one signature (0 to 19)              |
/// | 4, 5 | signature flip: byte `b4 % 64` of the signature xor `b5` (0: no flip)          |
/// | 6, 7 | payload tamper after signing: byte `b6 * len / 256` xor `b7` (0: untouched)    |
/// | 8, 9 | clock: `NOW` plus the big-endian i16 in minutes                                 |
///
/// The rest is the payload, signed as it is: seeds are the fixture plan and action, so the
/// fuzzer mutates documents that verify and reaches the parser and the validator behind the
/// signature check, which raw envelopes (base64 inside JSON) seldom pass.
pub const SIGNED_HEADER: usize = 10;

/// The header and payload of a clean envelope for `payload` (see [`SIGNED_HEADER`]).
pub fn signed_input(action: bool, payload: &[u8]) -> Vec<u8> {
    let mut out = vec![0u8; SIGNED_HEADER];
    out[0] = u8::from(action);
    out.extend_from_slice(payload);
    out
}

/// `envelope_signed`: an envelope built from the header and payload (see [`SIGNED_HEADER`]),
/// signed here and verified.
///
/// Properties: a clean envelope verifies exactly when its payload parses, validates, is
/// within its validity period at the clock (with the skew) and (for an action) is for this
/// queue, and then yields that payload, parsed; an envelope with a flipped signature or
/// payload byte, an untrusted or revoked signer, the wrong payload type, no signature or too
/// many never verifies, and fails for that reason.
pub fn envelope_signed(data: &[u8]) {
    let Some((header, payload)) = data.split_first_chunk::<SIGNED_HEADER>() else { return };
    let is_action = header[0] & 1 == 1;
    let (key, signer, trust) = match header[1] % 4 {
        0 => (fixtures::trusted_key(), Signer::Trusted, fixtures::trust()),
        1 => (fixtures::untrusted_key(), Signer::Untrusted, fixtures::trust()),
        2 => (fixtures::revoked_key(), Signer::NeverTrusted, fixtures::trust()),
        _ => (fixtures::trusted_key(), Signer::Revoked, fixtures::trust_revoked()),
    };
    let right_type = if is_action { ACTION_PAYLOAD_TYPE } else { PLAN_PAYLOAD_TYPE };
    let other_type = if is_action { PLAN_PAYLOAD_TYPE } else { ACTION_PAYLOAD_TYPE };
    let (payload_type, type_ok) = match header[2] % 4 {
        1 => (other_type.to_owned(), false),
        2 => (String::new(), false),
        3 => (format!("{right_type} "), false),
        _ => (right_type.to_owned(), true),
    };
    let copies = (usize::from(header[3]) + 1) % 20;
    let (sig_at, sig_mask) = (usize::from(header[4]) % 64, header[5]);
    let (tamper_at, tamper_mask) = (usize::from(header[6]), header[7]);
    let minutes = i64::from(i16::from_be_bytes([header[8], header[9]]));
    let now = NOW.saturating_add_signed(minutes * 60);

    let mut env = Envelope::sign(&payload_type, payload, key);
    let Some(sig) = env.signatures.first().cloned() else {
        panic!("Envelope::sign signed nothing")
    };
    let mut raw_sig = match B64.decode(&sig.sig) {
        Ok(raw) => raw,
        Err(e) => panic!("Envelope::sign wrote a signature that is not base64: {e}"),
    };
    raw_sig[sig_at] ^= sig_mask;
    let sig = EnvelopeSignature { keyid: sig.keyid, sig: B64.encode(&raw_sig) };
    env.signatures = vec![sig; copies];
    let tampered = tamper_mask != 0 && !payload.is_empty();
    if tampered {
        let mut altered = payload.to_vec();
        altered[tamper_at * payload.len() / 256] ^= tamper_mask;
        env.payload = B64.encode(&altered);
    }
    let bytes = env.to_json();

    let result = if is_action {
        verify_action(&bytes, trust, now, &fixtures::audience()).map(|v| {
            assert_eq!(v.payload(), payload, "verified bytes are not the signed bytes");
            Verified::Action(v.action().clone())
        })
    } else {
        verify_plan(&bytes, trust, now, &Limits::ABSOLUTE).map(|v| {
            assert_eq!(v.payload(), payload, "verified bytes are not the signed bytes");
            check_verified_plan(&v);
            Verified::Plan(Box::new(v.plan().clone()))
        })
    };

    if bytes.len() > MAX_ENVELOPE_BYTES {
        assert!(matches!(result, Err(VerifyError::Malformed(_))), "{result:?}");
        return;
    }
    let signatures_ok = (1..=MAX_SIGNATURES).contains(&copies);
    let clean = signer == Signer::Trusted && type_ok && signatures_ok && sig_mask == 0 && !tampered;
    if clean {
        let expected = if is_action {
            expect_action(payload, now).map(Verified::Action)
        } else {
            expect_plan(payload, now).map(|p| Verified::Plan(Box::new(p)))
        };
        match (&result, &expected) {
            (Ok(got), Some(want)) => assert_eq!(got, want),
            (Err(_), None) => {}
            (Ok(_), None) => panic!("verified, but the payload is not acceptable on its own"),
            (Err(e), Some(_)) => panic!("refused, but the payload is acceptable on its own: {e}"),
        }
        return;
    }
    let err = match result {
        Ok(_) => panic!(
            "a spoiled envelope verified: signer {signer:?}, type ok {type_ok}, \
             {copies} signatures, signature mask {sig_mask}, tampered {tampered}"
        ),
        Err(e) => e,
    };
    let _ = err.to_string();
    if !type_ok {
        assert!(matches!(err, VerifyError::PayloadType { .. }), "{err:?}");
    } else if copies == 0 {
        assert_eq!(err, VerifyError::NoSignature);
    } else if copies > MAX_SIGNATURES {
        assert_eq!(err, VerifyError::TooManySignatures(copies));
    } else {
        match signer {
            Signer::Untrusted | Signer::NeverTrusted => {
                assert!(matches!(err, VerifyError::UnknownSigner { .. }), "{err:?}");
            }
            Signer::Revoked => assert!(matches!(err, VerifyError::Revoked { .. }), "{err:?}"),
            Signer::Trusted => assert!(matches!(err, VerifyError::BadSignature { .. }), "{err:?}"),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Signer {
    Trusted,
    Untrusted,
    NeverTrusted,
    Revoked,
}

#[derive(Debug, PartialEq, Eq)]
enum Verified {
    Plan(Box<Plan>),
    Action(Action),
}

fn in_time(issued: u64, expires: u64, now: u64) -> bool {
    issued <= now.saturating_add(CLOCK_SKEW_SECS) && now <= expires.saturating_add(CLOCK_SKEW_SECS)
}

/// What `verify_plan` must yield for a clean envelope carrying `payload`, from the parser,
/// the validator and the clock alone.
fn expect_plan(payload: &[u8], now: u64) -> Option<Plan> {
    let plan = Plan::from_json(payload).ok()?;
    plan.validate(Form::Signed, &Limits::ABSOLUTE).ok()?;
    in_time(plan.issued_at?, plan.expires_at?, now).then_some(plan)
}

/// What `verify_action` must yield for a clean envelope carrying `payload`.
fn expect_action(payload: &[u8], now: u64) -> Option<Action> {
    let action = Action::from_json(payload).ok()?;
    action.validate().ok()?;
    let ok = in_time(action.issued_at, action.expires_at, now)
        && action.audience == fixtures::audience();
    ok.then_some(action)
}

/// Allowed per input byte in every target: serde turns a 2-byte JSON element (`0,`) into a
/// 32-byte buffered `Content` when it reads an internally tagged message, or a 3-byte one
/// (`"",`) into a 24-byte `String`; vectors then grow by doubling.
const PER_BYTE: usize = 32;
/// Allowed whatever the input: small tables, first-use buffers.
const SMALL: usize = 64 * 1024;

/// `plan`: at most 16 x the 1 MiB plan cap in one block, whatever the input.
pub const LIMIT_PLAN: Limit =
    Limit { fixed: SMALL, per_byte: PER_BYTE, absolute: 16 * MAX_PLAN_BYTES };
/// `frame`: `read_frame` reserves the body a frame's length prefix declares (up to
/// `MAX_FRAME`) before reading it, so that much is allowed for any input.
pub const LIMIT_FRAME: Limit =
    Limit { fixed: MAX_FRAME + SMALL, per_byte: PER_BYTE, absolute: 16 * MAX_FRAME + SMALL };
/// `envelope`: a verified envelope's payload is parsed as a plan (or an action), so the plan
/// target's absolute limit applies.
pub const LIMIT_ENVELOPE: Limit =
    Limit { fixed: SMALL, per_byte: PER_BYTE, absolute: 16 * MAX_PLAN_BYTES };
/// `envelope_signed`: as `envelope`.
pub const LIMIT_ENVELOPE_SIGNED: Limit = LIMIT_ENVELOPE;

/// Builds what the harnesses build once (keys, trust, signed fixtures), so that
/// it is not counted against the first input.
pub fn warm_up() {
    let _ = fixtures::trust();
    let _ = fixtures::trust_revoked();
    let _ = fixtures::plan();
    let _ = fixtures::untrusted_key();
    for target in ALL {
        (target.run)(b"");
    }
}

/// A fuzz target: its name (as `cargo fuzz` knows it), harness and allocation limit.
#[derive(Debug, Clone, Copy)]
pub struct Target {
    /// The target's name.
    pub name: &'static str,
    /// Its harness.
    pub run: fn(&[u8]),
    /// Largest single allocation allowed.
    pub limit: Limit,
}

/// Every target.
pub const ALL: [Target; 4] = [
    Target { name: "plan", run: plan, limit: LIMIT_PLAN },
    Target { name: "frame", run: frame, limit: LIMIT_FRAME },
    Target { name: "envelope", run: envelope, limit: LIMIT_ENVELOPE },
    Target { name: "envelope_signed", run: envelope_signed, limit: LIMIT_ENVELOPE_SIGNED },
];
