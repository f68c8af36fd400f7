// Camera and microphone: opening them with the person's choice of device, listing devices, and
// turning getUserMedia failures into sentences a person can act on.

/** Audio constraints. `raw` turns the browser's voice processing off (tests measure tones). */
export function audioConstraints(deviceId, raw) {
  const c = raw
    ? { echoCancellation: false, noiseSuppression: false, autoGainControl: false }
    : { echoCancellation: true, noiseSuppression: true, autoGainControl: true };
  if (deviceId) c.deviceId = { exact: deviceId };
  return c;
}

export function videoConstraints(deviceId) {
  const c = { width: { ideal: 640 }, height: { ideal: 360 }, frameRate: { ideal: 15, max: 30 } };
  if (deviceId) c.deviceId = { exact: deviceId };
  return c;
}

/** What to tell the person when getUserMedia fails with `error`. */
export function mediaErrorMessage(error) {
  switch (error?.name) {
    case 'NotAllowedError':
    case 'SecurityError':
      return 'Camera and microphone are blocked for this site. Allow them in your browser’s site settings ' +
        '(the icon left of the address), then reload the page — or join without them to listen and watch.';
    case 'NotFoundError':
    case 'OverconstrainedError':
      return 'No camera or microphone was found. You can still join to listen and watch.';
    case 'NotReadableError':
    case 'AbortError':
      return 'Your camera or microphone is in use by another application, or could not be started. ' +
        'Close the other application and reload — or join without them.';
    case 'InsecureContext':
      return 'Camera and microphone need a secure connection (https, or localhost).';
    default:
      return `Camera and microphone could not be opened (${error?.name || 'unknown error'}). You can still join to listen and watch.`;
  }
}

/**
 * Opens camera and microphone (either may be switched off). When both together fail for a reason
 * other than a refusal, each is tried alone, so that a broken camera still leaves the microphone.
 * Returns { stream (possibly with no tracks), error (the first failure or null) }.
 */
export async function openMedia({ audio = true, video = true, micId = null, cameraId = null, raw = false } = {}) {
  const md = navigator.mediaDevices;
  if (!md?.getUserMedia) {
    return { stream: new MediaStream(), error: { name: 'InsecureContext' } };
  }
  if (!audio && !video) return { stream: new MediaStream(), error: null };
  const a = audio ? audioConstraints(micId, raw) : false;
  const v = video ? videoConstraints(cameraId) : false;
  try {
    return { stream: await md.getUserMedia({ audio: a, video: v }), error: null };
  } catch (error) {
    if (error.name === 'NotAllowedError' || error.name === 'SecurityError' || !(audio && video)) {
      return { stream: new MediaStream(), error };
    }
    const stream = new MediaStream();
    for (const c of [{ audio: a }, { video: v }]) {
      try {
        (await md.getUserMedia(c)).getTracks().forEach((t) => stream.addTrack(t));
      } catch {
        // reported through `error` below
      }
    }
    return { stream, error };
  }
}

/** Cameras and microphones, as { video: [{id, label}], audio: [...] }. */
export async function listDevices() {
  const out = { video: [], audio: [] };
  if (!navigator.mediaDevices?.enumerateDevices) return out;
  const all = await navigator.mediaDevices.enumerateDevices();
  for (const d of all) {
    const list = d.kind === 'videoinput' ? out.video : d.kind === 'audioinput' ? out.audio : null;
    if (!list || !d.deviceId) continue;
    list.push({ id: d.deviceId, label: d.label || `${d.kind === 'videoinput' ? 'Camera' : 'Microphone'} ${list.length + 1}` });
  }
  return out;
}

/** Calls `onLevel(0..1)` about 20 times a second with the loudness of `track`; returns stop(). */
export function levelMeter(track, onLevel) {
  let ctx;
  try {
    ctx = new AudioContext();
  } catch {
    return () => {};
  }
  const src = ctx.createMediaStreamSource(new MediaStream([track]));
  const an = ctx.createAnalyser();
  an.fftSize = 512;
  src.connect(an);
  const buf = new Float32Array(an.fftSize);
  // A context made before any click may start suspended: resume on the first one.
  const resume = () => ctx.state === 'suspended' && ctx.resume().catch(() => {});
  resume();
  document.addEventListener('pointerdown', resume, { once: true });
  const timer = setInterval(() => {
    an.getFloatTimeDomainData(buf);
    let sum = 0;
    for (const x of buf) sum += x * x;
    const db = 10 * Math.log10(sum / buf.length + 1e-10);
    onLevel(Math.max(0, Math.min(1, (db + 60) / 50)));
  }, 50);
  return () => {
    clearInterval(timer);
    document.removeEventListener('pointerdown', resume);
    ctx.close().catch(() => {});
  };
}
