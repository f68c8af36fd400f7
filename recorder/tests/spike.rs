mod common;
use common::*;
use recorder::WebmWriter;

#[test]
fn spike() {
    let dir = temp_dir("spike");
    let path = dir.join("a.webm");
    let (media, pre_skip) = room_output(10_000, 6000, 3000);
    let mut w = WebmWriter::create(&path, video_params(), audio_params(pre_skip)).unwrap();
    println!("after create: {} bytes, pre_skip {pre_skip}", w.bytes_written());
    let mut last = w.bytes_written();
    for m in &media {
        m.write(&mut w).unwrap();
        let b = w.bytes_written();
        if b != last {
            println!("pts {} -> bytes {} (+{}) dur {}", m.pts_ms(), b, b - last, w.duration_ms());
            last = b;
        }
    }
    // video stops: 3 s audio only
    let mut opus = mixer::OpusEncoder::new(48000, 5).unwrap();
    for i in 0..150u64 {
        let d = opus.encode(&[0i16; 960]).unwrap();
        w.write_audio(16_000 + i * 20, &d).unwrap();
        let b = w.bytes_written();
        if b != last {
            println!("audio-only pts {} -> bytes {} (+{})", 16_000 + i*20, b, b - last);
            last = b;
        }
    }
    println!("{:?}", w.stats());
    let f = w.finish().unwrap();
    println!("{f:?} {}", path.display());
}
