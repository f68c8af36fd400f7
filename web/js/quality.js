// Connection quality from RTCPeerConnection.getStats(): round-trip time, packet loss and bitrates,
// summarised between two samples, and graded for the header's signal bars.

/** The figures of one stats report that the summary needs. */
export function readReport(report) {
  const r = { at: 0, rtt: null, bytesIn: 0, bytesOut: 0, lost: 0, received: 0, remoteLoss: null };
  let pairId = null;
  report.forEach((s) => {
    if (s.type === 'transport' && s.selectedCandidatePairId) pairId = s.selectedCandidatePairId;
  });
  report.forEach((s) => {
    r.at = Math.max(r.at, s.timestamp || 0);
    if (s.type === 'candidate-pair') {
      const selected = pairId ? s.id === pairId : s.nominated && s.state === 'succeeded';
      if (selected && typeof s.currentRoundTripTime === 'number') r.rtt = s.currentRoundTripTime * 1000;
    } else if (s.type === 'inbound-rtp') {
      r.bytesIn += s.bytesReceived || 0;
      r.lost += Math.max(0, s.packetsLost || 0);
      r.received += s.packetsReceived || 0;
    } else if (s.type === 'outbound-rtp') {
      r.bytesOut += s.bytesSent || 0;
    } else if (s.type === 'remote-inbound-rtp' && typeof s.fractionLost === 'number') {
      r.remoteLoss = Math.max(r.remoteLoss ?? 0, s.fractionLost);
      if (r.rtt === null && typeof s.roundTripTime === 'number') r.rtt = s.roundTripTime * 1000;
    }
  });
  return r;
}

/**
 * Quality between two readings: { rtt ms|null, loss 0..1|null (the worse of what we receive and
 * what the server reports receiving from us), down/up bit/s|null, grade good|fair|poor|unknown }.
 */
export function summarize(prev, cur) {
  const dt = prev ? (cur.at - prev.at) / 1000 : 0;
  const rate = (a, b) => (dt > 0 ? Math.max(0, ((b - a) * 8) / dt) : null);
  const down = prev ? rate(prev.bytesIn, cur.bytesIn) : null;
  const up = prev ? rate(prev.bytesOut, cur.bytesOut) : null;
  let loss = null;
  if (prev) {
    const lost = cur.lost - prev.lost;
    const got = cur.received - prev.received;
    if (lost + got > 0) loss = Math.max(0, lost) / (Math.max(0, lost) + Math.max(0, got));
  }
  if (cur.remoteLoss !== null) loss = Math.max(loss ?? 0, cur.remoteLoss);
  return { rtt: cur.rtt, loss, down, up, grade: grade(cur.rtt, loss, down) };
}

export function grade(rtt, loss, down) {
  if (rtt === null && loss === null) return 'unknown';
  if (down === 0) return 'poor'; // nothing arrives
  const r = rtt ?? 0;
  const l = loss ?? 0;
  if (r < 200 && l < 0.02) return 'good';
  if (r < 500 && l < 0.08) return 'fair';
  return 'poor';
}

export const fmt = {
  rtt: (v) => (v === null ? '–' : `${Math.round(v)} ms`),
  loss: (v) => (v === null ? '–' : `${(v * 100).toFixed(v < 0.1 ? 1 : 0)} %`),
  rate: (v) => (v === null ? '–' : v >= 1e6 ? `${(v / 1e6).toFixed(1)} Mbit/s` : `${Math.round(v / 1000)} kbit/s`),
};
