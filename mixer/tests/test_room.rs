//! End-to-end checks of `MediaRoom` with synthetic participants, faster than
//! real time: each participant sends a sine tone (Opus, 20 ms packets) and a
//! solid colour (VP8); every receiver's output is decoded and checked for
//! which tones it contains (Goertzel) and which colours sit in which tiles.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use mixer::{
    FRAME_SAMPLES, I420Frame, Layout, MediaConfig, MediaRoom, OpusDecoder, OpusEncoder,
    PLACEHOLDER_FG, ParticipantKey, Rect, TickOutput, Vp8Decoder, Vp8Encoder, Vp8EncoderConfig,
    Yuv, layout,
};

const SEND_W: u32 = 320;
const SEND_H: u32 = 180;
/// Participants send a video frame every third tick (60 ms, ~16.7 fps).
const VIDEO_EVERY: u64 = 3;
/// Largest per-component YUV error accepted on a decoded tile.
const COLOUR_TOLERANCE: u8 = 24;

struct Synth {
    key: ParticipantKey,
    freq: f32,
    amp: f32,
    colour: Yuv,
    opus: OpusEncoder,
    vp8: Vp8Encoder,
    frame: I420Frame,
    seq: u16,
    ts: u32,
    samples: u64,
    video_frames_sent: u32,
}

impl Synth {
    fn new(key: ParticipantKey, freq: f32, amp: f32, colour: Yuv) -> Self {
        Self {
            key,
            freq,
            amp,
            colour,
            opus: OpusEncoder::new(48_000, 5).expect("opus"),
            vp8: Vp8Encoder::new(Vp8EncoderConfig::realtime(SEND_W, SEND_H, 15, 300)).expect("vp8"),
            frame: I420Frame::new(SEND_W, SEND_H, colour).expect("frame"),
            seq: 1000,
            ts: 0,
            samples: 0,
            video_frames_sent: 0,
        }
    }

    fn next_audio(&mut self) -> Arc<[u8]> {
        let pcm: Vec<i16> = (0..FRAME_SAMPLES as u64)
            .map(|i| {
                let t = (self.samples + i) as f64 / 48_000.0;
                (f64::from(self.amp)
                    * (2.0 * std::f64::consts::PI * f64::from(self.freq) * t).sin())
                    as i16
            })
            .collect();
        self.samples += FRAME_SAMPLES as u64;
        self.opus.encode(&pcm).expect("encode")
    }
}

#[derive(Default)]
struct Received {
    pcm: Vec<i16>,
    opus: Option<OpusDecoder>,
    vp8: Option<Vp8Decoder>,
    picture: Option<I420Frame>,
    audio_packets: usize,
}

struct TestRoom {
    room: MediaRoom,
    synths: Vec<Synth>,
    received: HashMap<ParticipantKey, Received>,
    ticks: u64,
    /// Wall time spent inside the room's push/tick calls (reported, never asserted).
    room_time: Duration,
}

impl TestRoom {
    fn new() -> Self {
        mixer::ffmpeg_next::util::log::set_level(mixer::ffmpeg_next::util::log::Level::Fatal);
        Self {
            room: MediaRoom::new(MediaConfig::default()).expect("room"),
            synths: Vec::new(),
            received: HashMap::new(),
            ticks: 0,
            room_time: Duration::ZERO,
        }
    }

    /// The five standard participants: 300..1100 Hz; participant 0 is louder
    /// (so it becomes the active speaker); red, green, blue, yellow, magenta.
    fn with_five() -> Self {
        let mut t = Self::new();
        let colours = [
            (255, 0, 0),
            (0, 255, 0),
            (0, 0, 255),
            (255, 255, 0),
            (255, 0, 255),
        ];
        for (i, (r, g, b)) in colours.into_iter().enumerate() {
            let amp = if i == 0 { 4000.0 } else { 2000.0 };
            t.add(
                i as u64,
                300.0 + 200.0 * i as f32,
                amp,
                Yuv::from_rgb(r, g, b),
            );
        }
        t
    }

    fn add(&mut self, key: ParticipantKey, freq: f32, amp: f32, colour: Yuv) {
        self.room.add_participant(key, true);
        self.synths.push(Synth::new(key, freq, amp, colour));
        self.received.insert(key, Received::default());
    }

    fn remove(&mut self, key: ParticipantKey) {
        self.room.remove_participant(key);
        self.synths.retain(|s| s.key != key);
        self.received.remove(&key);
    }

    fn synth(&self, key: ParticipantKey) -> &Synth {
        self.synths.iter().find(|s| s.key == key).expect("synth")
    }

    /// Sends one tick of media from every synthetic participant, ticks the
    /// room and decodes everything it sent back.
    fn step(&mut self) -> TickOutput {
        let send_video = self.ticks.is_multiple_of(VIDEO_EVERY);
        let mut media = Vec::with_capacity(self.synths.len());
        for s in &mut self.synths {
            let pkt = s.next_audio();
            let video = if send_video {
                let pts = (self.ticks * 20) as i64;
                s.vp8.encode(&s.frame, pts).expect("encode").map(|f| f.data)
            } else {
                None
            };
            s.video_frames_sent += u32::from(video.is_some());
            media.push((s.key, s.seq, s.ts, pkt, video));
            s.seq = s.seq.wrapping_add(1);
            s.ts = s.ts.wrapping_add(960);
        }
        let started = Instant::now();
        for (key, seq, ts, pkt, video) in &media {
            self.room.push_audio(*key, *seq, *ts, pkt);
            if let Some(v) = video {
                self.room.push_video(*key, ts / 48 * 90, v, true);
            }
        }
        let out = self.room.tick();
        self.room_time += started.elapsed();
        self.ticks += 1;
        for (key, pkt) in &out.audio {
            let Some(r) = self.received.get_mut(key) else {
                continue;
            };
            let dec = r
                .opus
                .get_or_insert_with(|| OpusDecoder::new().expect("decoder"));
            let mut pcm = [0i16; FRAME_SAMPLES];
            dec.decode(pkt, &mut pcm)
                .expect("room sent undecodable audio");
            r.pcm.extend_from_slice(&pcm);
            r.audio_packets += 1;
        }
        for (key, data, _) in &out.video {
            let Some(r) = self.received.get_mut(key) else {
                continue;
            };
            let dec = r
                .vp8
                .get_or_insert_with(|| Vp8Decoder::new().expect("decoder"));
            let pic = dec
                .decode(data)
                .expect("room sent undecodable video")
                .expect("a picture");
            r.picture = Some(I420Frame::from_video(pic).expect("copy"));
        }
        out
    }

    fn run(&mut self, ticks: usize) -> Vec<TickOutput> {
        (0..ticks).map(|_| self.step()).collect()
    }

    /// Steps to the next video tick that sent a composite. The tier encoders may drop a
    /// frame that overshoots its budget (a scene change such as a layout change) and send the
    /// next one instead, so this is at most two frame intervals away.
    fn step_to_video_tick(&mut self) -> TickOutput {
        let mut got = std::collections::HashSet::new();
        for _ in 0..20 {
            let o = self.step();
            got.extend(o.video.iter().map(|(k, _, _)| *k));
            if o.video_tick && o.audio.iter().all(|(k, _)| got.contains(k)) {
                return o;
            }
        }
        panic!("no composite for every receiver within 400 ms");
    }

    /// Amplitude of `freq` in the last `window` samples a receiver heard.
    fn tone_amplitude(&self, key: ParticipantKey, freq: f32, window: usize) -> f64 {
        let pcm = &self.received[&key].pcm;
        assert!(pcm.len() >= window, "only {} samples", pcm.len());
        mixer::tone_amplitude(&pcm[pcm.len() - window..], f64::from(freq))
    }

    /// Current tile rectangles, keyed by participant.
    fn tiles(&self) -> Vec<(ParticipantKey, Rect)> {
        let (visible, speaker_tile) = self.room.visible();
        let cfg = self.room.config();
        let rects = layout(
            visible.len(),
            self.room.layout(),
            cfg.canvas_width,
            cfg.canvas_height,
            speaker_tile,
        );
        visible.iter().copied().zip(rects).collect()
    }

    fn colour_at(&self, receiver: ParticipantKey, rect: &Rect) -> Yuv {
        let pic = self.received[&receiver]
            .picture
            .as_ref()
            .expect("no video received");
        // Tiers below the canvas size send a scaled-down composite.
        let cfg = self.room.config();
        let (x, y) = rect.center();
        let x = x * pic.width() / cfg.canvas_width;
        let y = y * pic.height() / cfg.canvas_height;
        let r = (3 * pic.width() / cfg.canvas_width).max(1);
        pic.mean_around(x, y, r).expect("inside")
    }

    /// Every tile shows its participant's colour (or the placeholder for
    /// `placeholders`) in the composite `receiver` decoded last.
    fn assert_tiles(&self, receiver: ParticipantKey, placeholders: &[ParticipantKey], what: &str) {
        for (key, rect) in self.tiles() {
            let want = if placeholders.contains(&key) {
                PLACEHOLDER_FG
            } else {
                self.synth(key).colour
            };
            let got = self.colour_at(receiver, &rect);
            if std::env::var_os("MIXER_TEST_VERBOSE").is_some() {
                eprintln!("{what}: receiver {receiver}: tile of {key}: {got:?} want {want:?}");
            }
            assert!(
                got.distance(&want) <= COLOUR_TOLERANCE,
                "{what}: receiver {receiver}, tile of {key} at {rect:?}: got {got:?}, want {want:?}"
            );
        }
    }

    /// Each receiver hears every other synth's tone and not its own.
    fn assert_mix_minus(
        &self,
        receivers: &[ParticipantKey],
        silent: &[ParticipantKey],
        what: &str,
    ) {
        let window = 24_000; // the last 0.5 s
        for &r in receivers {
            let others: Vec<&Synth> = self
                .synths
                .iter()
                .filter(|s| s.key != r && !silent.contains(&s.key))
                .collect();
            let mut weakest = f64::MAX;
            for s in &others {
                let a = self.tone_amplitude(r, s.freq, window);
                let expected = f64::from(s.amp);
                assert!(
                    a > 0.6 * expected && a < 1.4 * expected,
                    "{what}: receiver {r} hears {} Hz at {a:.0}, sent at {expected}",
                    s.freq
                );
                weakest = weakest.min(a);
                if std::env::var_os("MIXER_TEST_VERBOSE").is_some() {
                    eprintln!(
                        "{what}: receiver {r}: {} Hz at {a:.0} (sent {expected})",
                        s.freq
                    );
                }
            }
            let absent: Vec<&Synth> = self
                .synths
                .iter()
                .filter(|s| s.key == r || silent.contains(&s.key))
                .collect();
            for s in absent {
                let a = self.tone_amplitude(r, s.freq, window);
                if std::env::var_os("MIXER_TEST_VERBOSE").is_some() {
                    eprintln!("{what}: receiver {r}: absent {} Hz at {a:.1}", s.freq);
                }
                assert!(
                    a < weakest / 10.0,
                    "{what}: receiver {r} still hears {} Hz (of {}) at {a:.1}, weakest wanted tone {weakest:.0}",
                    s.freq,
                    s.key
                );
            }
        }
    }
}

#[test]
fn goertzel_measures_amplitude() {
    let x: Vec<i16> = (0..24_000)
        .map(|i| (1000.0 * (2.0 * std::f64::consts::PI * 500.0 * i as f64 / 48_000.0).sin()) as i16)
        .collect();
    assert!((mixer::tone_amplitude(&x, 500.0) - 1000.0).abs() < 5.0);
    assert!(mixer::tone_amplitude(&x, 700.0) < 5.0);
}

#[test]
fn five_participants_hear_each_other_minus_themselves_and_see_everyone() {
    let mut t = TestRoom::with_five();
    // Three tiers in use: 1 on a thin link, 2 on a fat one, the rest unknown.
    t.room.set_bandwidth(1, Some(150_000));
    t.room.set_bandwidth(2, Some(10_000_000));
    let outs = t.run(150);
    assert!(
        outs.iter().all(|o| o.audio.len() == 5),
        "audio for everyone, every tick"
    );
    assert_eq!(t.room.stats().video_encoders, 3);
    assert_eq!(
        t.room.stats().audio_encodes_last_tick,
        5,
        "five speakers: five own mixes, no shared one needed"
    );
    t.assert_mix_minus(&[0, 1, 2, 3, 4], &[], "grid");
    assert_eq!(t.room.layout(), Layout::Grid);
    for receiver in [0, 1, 2] {
        t.assert_tiles(receiver, &[], "grid");
    }
    // Everyone speaks; the loudest (0) is the active speaker.
    let speaker_changes: Vec<Option<ParticipantKey>> =
        outs.iter().filter_map(|o| o.active_speaker).collect();
    assert_eq!(speaker_changes, vec![Some(0)]);
    let mut speaking: Vec<(ParticipantKey, bool)> = outs
        .iter()
        .flat_map(|o| o.speaking_changed.clone())
        .collect();
    speaking.sort_unstable();
    assert_eq!(speaking, (0..5).map(|k| (k, true)).collect::<Vec<_>>());

    // Speaker layout: 0 large on top, the others in the strip.
    t.room.set_layout(Layout::Speaker);
    t.step_to_video_tick();
    let tiles = t.tiles();
    let (big_key, big) = tiles
        .iter()
        .max_by_key(|(_, r)| r.w * r.h)
        .copied()
        .expect("tiles");
    assert_eq!(big_key, 0);
    assert_eq!((big.w, big.h), (640, 270));
    for receiver in [0, 1, 2] {
        t.assert_tiles(receiver, &[], "speaker layout");
    }
    // The speaker mutes: the loudest of the others takes over at once (it
    // already spoke for longer than the hysteresis), and the very next
    // composite shows the new speaker large.
    t.room.set_muted(0, true, false);
    let outs = t.run(3);
    let change = outs
        .iter()
        .find_map(|o| o.active_speaker)
        .expect("speaker change");
    let new_speaker = change.expect("someone");
    assert_ne!(new_speaker, 0);
    t.step_to_video_tick();
    let tiles = t.tiles();
    let (big_key, _) = tiles
        .iter()
        .max_by_key(|(_, r)| r.w * r.h)
        .copied()
        .expect("tiles");
    assert_eq!(big_key, new_speaker);
    t.assert_tiles(3, &[], "after the speaker changed");
    println!(
        "5 participants with video, 3 tiers: {:.3} ms per tick on average (push + tick, this build)",
        t.room_time.as_secs_f64() * 1000.0 / t.ticks as f64
    );
}

#[test]
fn two_hundred_participants_three_speakers_cost_four_opus_encodes() {
    // Without audio levels every input is decoded; with them (RFC 6464, as browsers send) the
    // 197 silent ones are not.
    let without = two_hundred(false);
    let with = two_hundred(true);
    println!(
        "200 publishers, 3 speakers (this build): without levels {:.3} ms per audio-only tick, \
         {:.3} ms per video tick; with levels {:.3} / {:.3} ms (25 placeholder tiles: the \
         composite is unchanged, so it is encoded once a second)",
        without.0, without.1, with.0, with.1
    );
}

/// Runs the 200-participant room; returns the mean ms per audio-only and per video tick.
fn two_hundred(levels: bool) -> (f64, f64) {
    let mut room = MediaRoom::new(MediaConfig::default()).expect("room");
    let mut speakers: Vec<Synth> = (0..3)
        .map(|i| Synth::new(i, 400.0 + 300.0 * i as f32, 3000.0, Yuv::BLACK))
        .collect();
    let silence = OpusEncoder::new(32_000, 5)
        .expect("opus")
        .encode(&[0; FRAME_SAMPLES])
        .expect("encode");
    for k in 0..200 {
        room.add_participant(k, true);
    }
    let packets: Vec<Vec<Arc<[u8]>>> = speakers
        .iter_mut()
        .map(|s| (0..100).map(|_| s.next_audio()).collect())
        .collect();
    // (audio-only ticks, video ticks): total time and count
    let mut elapsed = [(Duration::ZERO, 0u32); 2];
    let mut sent_to_listeners = 0;
    for t in 0..100u16 {
        let started = Instant::now();
        for k in 0..200u64 {
            let (pkt, level) = if k < 3 {
                (&packets[k as usize][t as usize], 9)
            } else {
                (&silence, 127)
            };
            room.push_audio_level(k, t, u32::from(t) * 960, pkt, levels.then_some(level));
        }
        let out = room.tick();
        if t >= 20 {
            let e = &mut elapsed[usize::from(out.video_tick)];
            e.0 += started.elapsed();
            e.1 += 1;
            assert_eq!(room.stats().audio_encodes_last_tick, 4, "tick {t}");
            // The 197 listeners share one packet: with 197 of them (past `pair_audio_from`)
            // each tick's frame is held and the next tick sends it paired with its own, so they
            // get nothing one tick and one shared packet of two frames the next.
            let listeners: Vec<&Arc<[u8]>> = out
                .audio
                .iter()
                .chain(&out.audio_late)
                .filter(|(k, _)| *k >= 3)
                .map(|(_, p)| p)
                .collect();
            if let Some(first) = listeners.first() {
                assert_eq!(listeners.len(), 197, "tick {t}");
                assert!(listeners.iter().all(|p| Arc::ptr_eq(p, first)), "tick {t}");
                sent_to_listeners += 1;
            }
        }
    }
    // Every other tick, give or take a frame sent alone where the encoder changed mode.
    assert!(
        (38..=50).contains(&sent_to_listeners),
        "{sent_to_listeners} of 80 ticks sent to the listeners"
    );
    let s = room.stats();
    assert_eq!(s.audio_decoders, 200);
    assert_eq!(s.audio_encoders, 4);
    if levels {
        assert!(
            s.audio_quiet_skipped > 197 * 90,
            "{}",
            s.audio_quiet_skipped
        );
    } else {
        assert_eq!(s.audio_quiet_skipped, 0);
    }
    let avg = |(d, n): (Duration, u32)| d.as_secs_f64() * 1000.0 / f64::from(n.max(1));
    (avg(elapsed[0]), avg(elapsed[1]))
}

#[test]
fn join_and_leave_mid_run_change_the_very_next_composite() {
    let mut t = TestRoom::with_five();
    // Join on a tick where the newcomer sends no video: it needs a PLI.
    t.run(61);
    t.assert_tiles(3, &[], "before join");

    // A sixth participant joins: the next composite has six tiles (its own
    // is the placeholder until its first frame, a keyframe, is decoded), and
    // its PLI goes out on the first tick.
    t.add(5, 1300.0, 2000.0, Yuv::from_rgb(0, 255, 255));
    let joined_at = t.ticks;
    let first = t.step();
    // A PLI unless its keyframe already arrived before the tick.
    assert_eq!(first.pli.contains(&5), t.synth(5).video_frames_sent == 0);
    assert_eq!(t.synth(5).video_frames_sent, 0);
    if !first.video_tick {
        t.step_to_video_tick();
    }
    assert!(
        t.ticks - joined_at <= 8,
        "layout change took more than two frame intervals"
    );
    assert_eq!(t.tiles().len(), 6);
    let placeholders: &[ParticipantKey] = if t.synth(5).video_frames_sent == 0 {
        &[5]
    } else {
        &[]
    };
    t.assert_tiles(3, placeholders, "first composite after join");
    t.run(50);
    t.assert_tiles(3, &[], "after join");
    t.assert_tiles(5, &[], "the newcomer's view");
    t.assert_mix_minus(&[0, 1, 5], &[], "after join");

    // It leaves: the next composite is back to five tiles; audio never stops.
    t.remove(5);
    let left_at = t.ticks;
    let out = t.step_to_video_tick();
    assert!(t.ticks - left_at <= 8);
    assert!(out.audio.iter().all(|(k, _)| *k != 5));
    assert_eq!(t.tiles().len(), 5);
    t.assert_tiles(3, &[], "first composite after leave");
    let outs = t.run(30);
    assert!(outs.iter().all(|o| o.audio.len() == 5));
    t.assert_mix_minus(&[0, 3], &[], "after leave");
    for r in t.received.values() {
        assert_eq!(r.pcm.len(), r.audio_packets * FRAME_SAMPLES);
    }
    assert_eq!(
        t.received[&0].audio_packets, t.ticks as usize,
        "a packet every tick"
    );
}

#[test]
fn muted_participant_leaves_the_mix_and_shows_the_placeholder() {
    let mut t = TestRoom::with_five();
    t.run(60);
    t.room.set_muted(2, true, true);
    let outs = t.run(60);
    assert!(
        outs.iter()
            .any(|o| o.speaking_changed.contains(&(2, false)))
    );
    t.assert_mix_minus(&[0, 1, 3, 4], &[2], "2 muted");
    // The muted participant still hears everyone else (from the shared mix,
    // which does not contain it).
    t.assert_mix_minus(&[2], &[], "2's own view");
    let s = t.room.stats();
    assert_eq!(
        s.audio_encodes_last_tick, 5,
        "4 own mixes + the shared full mix for 2"
    );
    t.assert_tiles(0, &[2], "2 muted");
    t.assert_tiles(2, &[2], "2 muted, its own view");

    // Unmuted: back in the mix and on screen (after its next keyframe, which
    // the room asks for).
    t.room.set_muted(2, false, false);
    let outs = t.run(60);
    assert!(outs.iter().any(|o| o.pli.contains(&2)));
    t.assert_mix_minus(&[0, 1], &[], "2 unmuted");
}

#[test]
fn garbage_input_never_panics_and_only_hurts_its_sender() {
    let mut t = TestRoom::new();
    t.add(0, 300.0, 3000.0, Yuv::from_rgb(255, 0, 0));
    t.add(1, 700.0, 3000.0, Yuv::from_rgb(0, 0, 255));
    // 9 publishes but sends only junk (it is not a synth).
    t.room.add_participant(9, true);
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut rand = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let mut junk_plis = 0;
    let good_kf = {
        let mut enc =
            Vp8Encoder::new(Vp8EncoderConfig::realtime(SEND_W, SEND_H, 15, 300)).expect("vp8");
        let f = I420Frame::new(SEND_W, SEND_H, Yuv::BLACK).expect("frame");
        enc.encode(&f, 0).expect("encode").expect("frame").data
    };
    for i in 0..150u32 {
        let len = (rand() % 300) as usize;
        let junk: Vec<u8> = (0..len).map(|_| rand() as u8).collect();
        t.room.push_audio(9, rand() as u16, rand() as u32, &junk);
        t.room.push_audio(9, i as u16, 0, &[]);
        t.room.push_audio(9, i as u16, 0, &junk[..len.min(3)]);
        t.room.push_video(9, 0, &junk, rand() % 2 == 0);
        t.room.push_video(9, 0, &[], true);
        // A truncated keyframe: parses as a key, fails to decode.
        t.room
            .push_video(9, 0, &good_kf[..good_kf.len().min(40)], true);
        // Unknown participants are ignored.
        t.room.push_audio(77, 1, 1, &junk);
        t.room.push_video(77, 1, &junk, true);
        let o = t.step();
        if o.pli.contains(&9) {
            junk_plis += 1;
        }
        assert!(
            !o.pli.contains(&0) || i < 5,
            "good participant asked for a keyframe at tick {i}"
        );
    }
    // One PLI per 500 ms for the junk sender, throughout.
    assert!(junk_plis >= 5, "junk sender got {junk_plis} PLIs");
    assert!(t.room.stats().video_decode_errors > 0);
    t.assert_mix_minus(&[0, 1], &[], "next to a junk sender");
    t.assert_tiles(0, &[9], "next to a junk sender");
}
