// Reading a join token in the page. The page never verifies a token (it has no secret): it only
// reads the room, the display name and the expiry to say the right things before joining. The
// server decides.

/** The claims of a JWT, or null when it is not one. */
export function decodeToken(token) {
  try {
    const part = token.split('.')[1];
    const b64 = part.replace(/-/g, '+').replace(/_/g, '/');
    const bin = atob(b64.padEnd(Math.ceil(b64.length / 4) * 4, '='));
    const claims = JSON.parse(new TextDecoder().decode(Uint8Array.from(bin, (c) => c.charCodeAt(0))));
    return claims && typeof claims === 'object' ? claims : null;
  } catch {
    return null;
  }
}

/** Whether the claims' `exp` (Unix seconds) has passed. */
export function isExpired(claims, now = Date.now()) {
  return typeof claims?.exp === 'number' && claims.exp * 1000 <= now;
}

export const ROOM_NAME = /^[A-Za-z0-9_-]{1,64}$/;
