// Sprays a UDP port with what an attacker or a scanner sends: datagrams that look like nothing
// (random bytes, RTP-looking headers) and STUN binding requests naming ufrags no connection has.
// Run inside the server's network namespace by one-port.test.mjs:
//   node udp-flood.mjs HOST PORT SECONDS GARBAGE_PER_S STUN_PER_S
// Prints what it sent as JSON on exit.
import dgram from 'node:dgram';
import { randomBytes } from 'node:crypto';

const [host, port, seconds, garbagePerS, stunPerS] = process.argv.slice(2);
const sock = dgram.createSocket('udp4');

function stunRequest(user) {
  const u = Buffer.from(user);
  const pad = (4 - (u.length % 4)) % 4;
  const attr = Buffer.concat([Buffer.from([0x00, 0x06, 0, u.length]), u, Buffer.alloc(pad)]);
  const head = Buffer.alloc(20);
  head.writeUInt16BE(0x0001, 0);
  head.writeUInt16BE(attr.length, 2);
  head.writeUInt32BE(0x2112a442, 4);
  randomBytes(12).copy(head, 8);
  return Buffer.concat([head, attr]);
}

const sent = { garbage: 0, stun: 0 };
const stepMs = 10;
const perStep = (n) => Math.max(0, Math.round((Number(n) * stepMs) / 1000));
const end = Date.now() + Number(seconds) * 1000;
const timer = setInterval(() => {
  if (Date.now() >= end) {
    clearInterval(timer);
    // Let the last sends leave before closing.
    setTimeout(() => { sock.close(); console.log(JSON.stringify(sent)); }, 200);
    return;
  }
  for (let i = 0; i < perStep(garbagePerS); i++) {
    const b = randomBytes(100 + (i % 1000));
    if (i % 2 === 0) b[0] = 0x80; // RTP version 2, like stray media
    sock.send(b, Number(port), host);
    sent.garbage += 1;
  }
  for (let i = 0; i < perStep(stunPerS); i++) {
    sock.send(stunRequest(`${randomBytes(4).toString('hex')}:${randomBytes(4).toString('hex')}`), Number(port), host);
    sent.stun += 1;
  }
}, stepMs);
