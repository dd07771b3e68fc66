/*
 * meshrouter.dataplane._dataplane: the data plane's per-message loop in C.
 *
 * The Python forwarder (forwarder.py, send.py, receive.py) decides where every
 * frame goes; this loop only repeats decisions it was told, with no Python on
 * the way:
 *
 *   TAP -> UDP  a frame whose destination MAC has a *lane* (set by Python when
 *               it routed a frame there: next hop's session, destination peer,
 *               our source MAC) is sealed with one AEAD call and sent with one
 *               sendmsg.  A TCP superframe (TSO) is cut into segments, each
 *               sealed as a message of its own in one datagram, all sent with
 *               UDP GSO ("TCP segments" below).  Any other message larger than
 *               a datagram goes as one UDP GSO send whose iovec alternates
 *               segment headers and ciphertext slices (the kernel lays them out).
 *   UDP -> TAP  a datagram (or a whole GRO-coalesced message) for a *bound*
 *               receiver index, from the address Python knows, is checked
 *               against the replay window, opened, and if it is DATA for us
 *               whose frames come from MACs Python has *seen* at that origin
 *               within the last second, its frames go to the TAP through the
 *               coalescer, which joins in-order TCP segments of a connection
 *               into a superframe and writes it when the drain ends.
 *   relaying    DATA for another peer goes on to the next hop Python relayed
 *               the last one to (set_relay), re-sealed, hop limit down by one.
 *   end to end  a lane may carry the destination's own session too (its next
 *               hop is a relay): the frame is sealed with it first, and each
 *               such datagram is the payload of a message to the hop (route
 *               header, a first frame length of 0).  Such a datagram for us is
 *               opened with the session Python bound to its receiver index
 *               (bind_sealed), for the origin its route header names.
 *
 * Anything else (an unknown MAC, a broadcast, a heartbeat, a bad
 * packet, a moved peer) is an event: run() returns, Python handles it with
 * the same code the pure-Python forwarder uses, and calls run() again.
 * Lanes, bindings, relays and seen MACs are caches filled by Python; invalidate()
 * (any thread: one atomic increment) empties them all at the next drain.
 *
 * Session holds what both sides share about one link's data path: the send
 * counter (the nonce), the replay window, the path's datagram size, the
 * peer's address and the counters.  Python's seal/open paths use the same
 * object, so a nonce is never used twice and a message never accepted twice.
 *
 * AEAD functions are libsodium's, called through pointers handed over by
 * Python (PyNaCl's own libsodium, which has AEGIS-128L): nothing to link.
 * Threads: run() releases the GIL for its whole duration and touches only C
 * memory owned by this loop and its sessions; every other method is called
 * by the forwarder's thread while run() is not running, except invalidate().
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <structmember.h>

#include <errno.h>
#include <math.h>
#include <netinet/in.h>
#include <arpa/inet.h>
#include <sched.h>
#include <stdint.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

#define HDR 15          /* type, receiver index, counter, segment, segments */
#define AD 13           /* the associated data: type, index, counter */
#define ROUTE_SIZE 13   /* origin, destination, hops left */
#define PREFIX 17       /* ... and the first frame's length */
#define NAME_SIZE ((socklen_t)sizeof(struct sockaddr_in6)) /* a datagram sender of either family */
#define ETH_AT 10       /* virtio_net_hdr before the Ethernet header */
#define MIN_FRAME (ETH_AT + 14)
#define MAX_HOPS 16
#define MAX_SEGMENTS 64
#define GSO_MAX 65507  /* a UDP GSO send: 65535 less the IPv4 and UDP headers */
#define DRAIN 64
#define RELEARN 1.0     /* a lane or a seen MAC goes back to Python this often */
#define WINDOW 4096     /* replay window, as replay.ReplayWindow's default */
#define T_DATA 1
#define T_HEARTBEAT 2
#define SOL_UDP_ 17
#define UDP_SEGMENT_ 103
#define UDP_GRO_ 104
#define NLANES 1024
#define NBOUND 256
#define NSEALED 256 /* sessions with peers beyond a relay, by receiver index */
#define NRELAYS 256 /* next hops of messages we relay, by destination peer */
#define NSEEN 1024
#define NERRNO 160

enum { EV_TIMEOUT, EV_WAKE, EV_TAP, EV_TAP_DONE, EV_UDP, EV_PLAIN, EV_TOO_SMALL };
enum {
    C_FRAMES_SENT, C_MESSAGES_DELIVERED, C_FRAMES_TO_PYTHON, C_DATAGRAMS_TO_PYTHON, C_GSO_SENDS,
    C_SUPERFRAMES_CUT, C_SEGMENTS_SEALED, C_SUPERFRAMES_JOINED, C_SEGMENTS_JOINED,
    C_SEALED_END_TO_END, C_OPENED_END_TO_END, C_MESSAGES_RELAYED, C_RELAYED_UNREAD,
    D_TAP_RUNT, D_TAP_READ_ERROR, D_UDP_RECV_ERROR, D_EMPTY, D_TAP_WRITE_BLOCK,
    D_TAP_WRITE_ERROR, D_GSO_FALLBACK, D_TOO_LARGE, D_PACK_LOST, NCOUNTS
};

typedef int (*enc_fn)(unsigned char *, unsigned long long *, const unsigned char *,
                      unsigned long long, const unsigned char *, unsigned long long,
                      const unsigned char *, const unsigned char *, const unsigned char *);
typedef int (*dec_fn)(unsigned char *, unsigned long long *, unsigned char *,
                      const unsigned char *, unsigned long long, const unsigned char *,
                      unsigned long long, const unsigned char *, const unsigned char *);

static inline void be32(unsigned char *p, uint32_t v) {
    p[0] = v >> 24; p[1] = v >> 16; p[2] = v >> 8; p[3] = v;
}
static inline void be64(unsigned char *p, uint64_t v) {
    for (int i = 7; i >= 0; i--) { p[i] = v & 0xff; v >>= 8; }
}
static inline void le64(unsigned char *p, uint64_t v) {
    for (int i = 0; i < 8; i++) { p[i] = v & 0xff; v >>= 8; }
}
static inline uint32_t rd32(const unsigned char *p) {
    return ((uint32_t)p[0] << 24) | ((uint32_t)p[1] << 16) | ((uint32_t)p[2] << 8) | p[3];
}
static inline uint64_t rd64(const unsigned char *p) {
    uint64_t v = 0;
    for (int i = 0; i < 8; i++) v = (v << 8) | p[i];
    return v;
}
static inline unsigned mac_hash(const unsigned char *m, unsigned size) {
    uint32_t h = 2166136261u;
    for (int i = 0; i < 6; i++) h = (h ^ m[i]) * 16777619u;
    return (h ^ (h >> 15)) & (size - 1);
}
static double mono(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

/* ------------------------------------------------------------------ Session */

typedef struct {
    PyObject_HEAD
    enc_fn enc;
    dec_fn dec;
    unsigned char skey[32], rkey[32];
    unsigned char snonce[32], rnonce[32]; /* counter little-endian in the first 8 bytes */
    int tag;
    unsigned int peer_index;
    unsigned long long counter, limit;
    int any;                  /* anything accepted yet */
    unsigned long long top;   /* highest counter accepted */
    uint64_t bits[WINDOW / 64];
    int datagram_size;
    /* The peer's UDP address, in both forms: ``addr4`` for an IPv4 socket,
       ``addr6`` (IPv4-mapped for an IPv4 peer) for an IPv6 one. */
    struct sockaddr_in addr4;
    struct sockaddr_in6 addr6;
    int has_addr; /* 0: none; AF_INET or AF_INET6: the peer's family */
    double heard_at;
    unsigned long long tx_packets, tx_messages, tx_frames, tx_bytes;
    unsigned long long rx_packets, rx_messages, rx_frames, rx_bytes;
} Session;

static int replay_would(const Session *s, uint64_t c) {
    if (!s->any || c > s->top) return 1;
    if (s->top - c >= WINDOW) return 0;
    return !((s->bits[(c % WINDOW) / 64] >> (c % 64)) & 1);
}

static int replay_accept(Session *s, uint64_t c) {
    if (!s->any || c > s->top) {
        if (s->any) {
            uint64_t shift = c - s->top;
            if (shift >= WINDOW) {
                memset(s->bits, 0, sizeof s->bits);
            } else {
                for (uint64_t x = s->top + 1; x < c; x++)
                    s->bits[(x % WINDOW) / 64] &= ~((uint64_t)1 << (x % 64));
            }
        } else {
            memset(s->bits, 0, sizeof s->bits);
        }
        s->bits[(c % WINDOW) / 64] |= (uint64_t)1 << (c % 64);
        s->top = c;
        s->any = 1;
        return 1;
    }
    if (s->top - c >= WINDOW) return 0;
    uint64_t bit = (uint64_t)1 << (c % 64);
    if (s->bits[(c % WINDOW) / 64] & bit) return 0;
    s->bits[(c % WINDOW) / 64] |= bit;
    return 1;
}

static int Session_init(Session *self, PyObject *args, PyObject *kw) {
    static char *names[] = {"encrypt", "decrypt", "send_key", "recv_key", "nonce_bytes",
                            "tag_bytes", "peer_index", "limit", NULL};
    unsigned long long enc, dec, limit;
    Py_buffer sk, rk;
    int nonce_bytes, tag;
    unsigned int peer_index;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "KKy*y*iiIK", names, &enc, &dec, &sk, &rk,
                                     &nonce_bytes, &tag, &peer_index, &limit))
        return -1;
    int bad = sk.len != 32 || rk.len != 32 || nonce_bytes < 8 || nonce_bytes > 32 || tag < 0 ||
              tag > 64 || !enc || !dec;
    if (!bad) {
        memcpy(self->skey, sk.buf, 32);
        memcpy(self->rkey, rk.buf, 32);
    }
    PyBuffer_Release(&sk);
    PyBuffer_Release(&rk);
    if (bad) {
        PyErr_SetString(PyExc_ValueError, "bad session parameters");
        return -1;
    }
    self->enc = (enc_fn)(uintptr_t)enc;
    self->dec = (dec_fn)(uintptr_t)dec;
    memset(self->snonce, 0, sizeof self->snonce);
    memset(self->rnonce, 0, sizeof self->rnonce);
    self->tag = tag;
    self->peer_index = peer_index;
    self->limit = limit;
    self->counter = 0;
    self->any = 0;
    self->top = 0;
    memset(self->bits, 0, sizeof self->bits);
    self->datagram_size = 1232;
    self->has_addr = 0;
    self->heard_at = -INFINITY;
    return 0;
}

static PyObject *Session_next_counter(Session *self, PyObject *unused) {
    if (self->counter >= self->limit) return PyLong_FromLong(-1);
    return PyLong_FromUnsignedLongLong(self->counter++);
}

static int counter_arg(PyObject *arg, uint64_t *c) {
    *c = PyLong_AsUnsignedLongLong(arg);
    return !(*c == (unsigned long long)-1 && PyErr_Occurred());
}

static PyObject *Session_would_accept(Session *self, PyObject *arg) {
    uint64_t c;
    if (!counter_arg(arg, &c)) return NULL;
    return PyBool_FromLong(replay_would(self, c));
}

static PyObject *Session_accept(Session *self, PyObject *arg) {
    uint64_t c;
    if (!counter_arg(arg, &c)) return NULL;
    return PyBool_FromLong(replay_accept(self, c));
}

static PyObject *Session_set_addr(Session *self, PyObject *args) {
    PyObject *addr;
    if (!PyArg_ParseTuple(args, "O", &addr)) return NULL;
    if (addr == Py_None) {
        self->has_addr = 0;
        Py_RETURN_NONE;
    }
    const char *host;
    int port;
    if (!PyArg_ParseTuple(addr, "si", &host, &port)) return NULL;
    if (port < 0 || port > 65535) {
        PyErr_SetString(PyExc_ValueError, "port out of range");
        return NULL;
    }
    struct in_addr in;
    struct in6_addr in6;
    memset(&self->addr4, 0, sizeof self->addr4);
    memset(&self->addr6, 0, sizeof self->addr6);
    self->addr4.sin_family = AF_INET;
    self->addr4.sin_port = htons((uint16_t)port);
    self->addr6.sin6_family = AF_INET6;
    self->addr6.sin6_port = htons((uint16_t)port);
    if (inet_pton(AF_INET, host, &in) == 1) {
        self->addr4.sin_addr = in;
        self->addr6.sin6_addr.s6_addr[10] = 0xff; /* ::ffff:a.b.c.d */
        self->addr6.sin6_addr.s6_addr[11] = 0xff;
        memcpy(&self->addr6.sin6_addr.s6_addr[12], &in, 4);
        self->has_addr = AF_INET;
    } else if (inet_pton(AF_INET6, host, &in6) == 1) {
        self->addr6.sin6_addr = in6;
        self->has_addr = AF_INET6;
    } else {
        PyErr_SetString(PyExc_ValueError, "not an IP address and port");
        return NULL;
    }
    Py_RETURN_NONE;
}

static PyObject *Session_get_top(Session *self, void *unused) {
    if (!self->any) return PyLong_FromLong(-1);
    return PyLong_FromUnsignedLongLong(self->top);
}

static size_t seal_tcp_segments(Session *s, const unsigned char *vf, size_t n,
                                const unsigned char *me, const unsigned char *peer,
                                unsigned char *out, size_t cap, size_t *total,
                                size_t *stride);

static PyObject *Session_seal_segments(Session *self, PyObject *args) {
    Py_buffer frame, me, peer, out;
    if (!PyArg_ParseTuple(args, "y*y*y*w*", &frame, &me, &peer, &out)) return NULL;
    PyObject *res = NULL;
    if (me.len != 6 || peer.len != 6) {
        PyErr_SetString(PyExc_ValueError, "me and peer must be 6 bytes");
    } else {
        size_t total = 0, stride = 0;
        size_t count = seal_tcp_segments(self, frame.buf, (size_t)frame.len, me.buf, peer.buf,
                                         out.buf, (size_t)out.len, &total, &stride);
        res = Py_BuildValue("(nnn)", (Py_ssize_t)count, (Py_ssize_t)total, (Py_ssize_t)stride);
    }
    PyBuffer_Release(&frame);
    PyBuffer_Release(&me);
    PyBuffer_Release(&peer);
    PyBuffer_Release(&out);
    return res;
}

static PyMethodDef Session_methods[] = {
    {"seal_segments", (PyCFunction)Session_seal_segments, METH_VARARGS,
     "seal_segments(frame, me, peer, out) -> (count, total, stride): a TCP superframe "
     "(virtio header and frame) sealed one DATA message per segment into out, laid out "
     "for UDP GSO; count 0 if it is no superframe this cuts."},
    {"next_counter", (PyCFunction)Session_next_counter, METH_NOARGS,
     "The next send counter (nonce), or -1 once the limit is reached."},
    {"would_accept", (PyCFunction)Session_would_accept, METH_O,
     "True if the counter is new and not too old (records nothing)."},
    {"accept", (PyCFunction)Session_accept, METH_O,
     "Record the counter; False if it is a replay or too old."},
    {"set_addr", (PyCFunction)Session_set_addr, METH_VARARGS,
     "The peer's UDP address, (host, port), or None."},
    {NULL}};

static PyMemberDef Session_members[] = {
    {"counter", T_ULONGLONG, offsetof(Session, counter), READONLY, "next send counter"},
    {"datagram_size", T_INT, offsetof(Session, datagram_size), 0, "path's datagram size"},
    {"heard_at", T_DOUBLE, offsetof(Session, heard_at), 0, "last authentic message"},
    {"tx_packets", T_ULONGLONG, offsetof(Session, tx_packets), 0, NULL},
    {"tx_messages", T_ULONGLONG, offsetof(Session, tx_messages), 0, NULL},
    {"tx_frames", T_ULONGLONG, offsetof(Session, tx_frames), 0, NULL},
    {"tx_bytes", T_ULONGLONG, offsetof(Session, tx_bytes), 0, NULL},
    {"rx_packets", T_ULONGLONG, offsetof(Session, rx_packets), 0, NULL},
    {"rx_messages", T_ULONGLONG, offsetof(Session, rx_messages), 0, NULL},
    {"rx_frames", T_ULONGLONG, offsetof(Session, rx_frames), 0, NULL},
    {"rx_bytes", T_ULONGLONG, offsetof(Session, rx_bytes), 0, NULL},
    {NULL}};

static PyGetSetDef Session_getset[] = {
    {"top", (getter)Session_get_top, NULL, "highest counter accepted, -1 if none", NULL},
    {NULL}};

static PyTypeObject SessionType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "meshrouter.dataplane._dataplane.Session",
    .tp_basicsize = sizeof(Session),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "What Python and the C loop share about one link's data path.",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)Session_init,
    .tp_methods = Session_methods,
    .tp_members = Session_members,
    .tp_getset = Session_getset,
};

/* ------------------------------------------------------------ TCP segments
 *
 * Issue 22: a TCP superframe the TAP hands over (TSO) is cut into segments
 * here and each is sealed as a message of its own, so a datagram lost on the
 * path costs one segment, not the ~44 of a superframe sealed whole.  On
 * receive, consecutive in-order segments of one connection are joined back
 * into a superframe with a GSO virtio header before they are written to the
 * TAP.  The reference for both is tso.py (tests hold this code to it byte for
 * byte); the rules are the kernel's tcp_gso_segment and tcp_gro_receive.
 * Offsets in Tcp are from the Ethernet header.
 */

#define VNET_NEEDS_CSUM 0x01
#define VNET_DATA_VALID 0x02
#define GSO_NONE 0
#define GSO_TCPV4 1
#define GSO_TCPV6 4
#define GSO_ECN 0x80
#define TH_FIN 0x01
#define TH_SYN 0x02
#define TH_RST 0x04
#define TH_PSH 0x08
#define TH_URG 0x20
#define TH_CWR 0x80
#define MAX_SUPER (65535 + 14) /* the IP length field's limit, and Ethernet */
#define NRUNS 8                /* connections being coalesced at a time */
#define SEG_OUT (1 << 18)      /* room for one superframe's sealed segments */
#define WRAP (HDR + PREFIX)    /* what a relay's message adds in front (and its tag) */
#define WRAP_OUT (2 * SEG_OUT) /* room for them, each inside a message to a relay */

typedef struct {
    int version, ip, ip_len, tcp, tcp_len, end; /* end: where the payload starts */
    uint32_t seq;
    int flags;
} Tcp;

static inline uint16_t rd16(const unsigned char *p) { return (uint16_t)((p[0] << 8) | p[1]); }
static inline void put16(unsigned char *p, unsigned v) {
    p[0] = (unsigned char)(v >> 8);
    p[1] = (unsigned char)v;
}
static inline void le16(unsigned char *p, unsigned v) {
    p[0] = (unsigned char)v;
    p[1] = (unsigned char)(v >> 8);
}

/* One's-complement sum of big-endian 16-bit words, unfolded. */
static uint64_t sum16(const unsigned char *p, size_t n, uint64_t s) {
    for (; n > 1; p += 2, n -= 2) s += (uint64_t)((p[0] << 8) | p[1]);
    if (n) s += (uint64_t)p[0] << 8;
    return s;
}
static uint16_t fold16(uint64_t s) {
    while (s >> 16) s = (s & 0xffff) + (s >> 16);
    return (uint16_t)s;
}
static uint64_t pseudo_sum(const unsigned char *ip, int version, size_t tcp_len) {
    if (version == 4) return sum16(ip + 12, 8, 0) + 6 + tcp_len;
    return sum16(ip + 8, 32, 0) + 6 + (tcp_len >> 16) + (tcp_len & 0xffff);
}

/* The headers of the TCP frame at eth (n bytes, Ethernet on): 1, or 0 if it
   is not TCP over IPv4 (options allowed, no fragment) or IPv6 (no extension
   header) with whole headers. */
static int tcp_parse(const unsigned char *eth, size_t n, Tcp *h) {
    if (n < 14 + 20) return 0;
    const unsigned char *ip = eth + 14;
    unsigned et = rd16(eth + 12);
    h->ip = 14;
    if (et == 0x0800) {
        h->version = 4;
        h->ip_len = (ip[0] & 15) * 4;
        if (ip[0] >> 4 != 4 || h->ip_len < 20 || ip[9] != 6 || (rd16(ip + 6) & 0x3fff)) return 0;
    } else if (et == 0x86dd) {
        h->version = 6;
        h->ip_len = 40;
        if (n < 14 + 40 || ip[0] >> 4 != 6 || ip[6] != 6) return 0;
    } else {
        return 0;
    }
    h->tcp = 14 + h->ip_len;
    if (n < (size_t)h->tcp + 20) return 0;
    h->tcp_len = (eth[h->tcp + 12] >> 4) * 4;
    if (h->tcp_len < 20 || n < (size_t)(h->tcp + h->tcp_len)) return 0;
    h->end = h->tcp + h->tcp_len;
    h->seq = rd32(eth + h->tcp + 4);
    h->flags = eth[h->tcp + 13];
    return 1;
}

/* Lengths, the IPv4 header checksum and the TCP checksum (partial: the
   pseudo-header sum a NEEDS_CSUM frame holds; full: the real one). */
static void tcp_finish(unsigned char *eth, const Tcp *h, size_t payload, int full) {
    unsigned char *ip = eth + h->ip, *tcp = eth + h->tcp;
    size_t total = (size_t)h->tcp_len + payload;
    if (h->version == 4) {
        put16(ip + 2, (unsigned)(h->ip_len + total));
        put16(ip + 10, 0);
        put16(ip + 10, (uint16_t)~fold16(sum16(ip, (size_t)h->ip_len, 0)));
    } else {
        put16(ip + 4, (unsigned)total);
    }
    uint64_t ps = pseudo_sum(ip, h->version, total);
    if (full) {
        put16(tcp + 16, 0);
        put16(tcp + 16, (uint16_t)~fold16(sum16(tcp, total, ps)));
    } else {
        put16(tcp + 16, fold16(ps));
    }
}

static void vnet_put(unsigned char *v, int flags, int gso_type, int hdr_len, int gso_size,
                     int csum_start, int csum_offset) {
    v[0] = (unsigned char)flags;
    v[1] = (unsigned char)gso_type;
    le16(v + 2, (unsigned)hdr_len);
    le16(v + 4, (unsigned)gso_size);
    le16(v + 6, (unsigned)csum_start);
    le16(v + 8, (unsigned)csum_offset);
}

/* The headers and MSS of the TCP superframe vf (virtio header and frame, n
   bytes): 1, or 0 if it is no superframe we cut (it then goes whole). */
static int tcp_superframe(const unsigned char *vf, size_t n, Tcp *h, size_t *mss) {
    if (n < ETH_AT) return 0;
    int kind = vf[1] & ~GSO_ECN;
    if (kind != GSO_TCPV4 && kind != GSO_TCPV6) return 0;
    if (n - ETH_AT > MAX_SUPER || !tcp_parse(vf + ETH_AT, n - ETH_AT, h)) return 0;
    if ((kind == GSO_TCPV4) != (h->version == 4) || (h->flags & (TH_SYN | TH_RST))) return 0;
    *mss = (size_t)(vf[4] | (vf[5] << 8));
    return *mss > 0 && n - ETH_AT > (size_t)h->end;
}

/* Segment i of count (payload mss each, the last maybe less) of superframe
   vf (n bytes) written at out as virtio header and frame; returns its length. */
static size_t tcp_segment_one(unsigned char *out, const unsigned char *vf, size_t n, const Tcp *h,
                              size_t mss, size_t i, size_t count, int full) {
    const unsigned char *eth = vf + ETH_AT;
    unsigned char *o = out + ETH_AT;
    size_t payload = n - ETH_AT - (size_t)h->end, off = i * mss;
    size_t len = payload - off < mss ? payload - off : mss;
    memcpy(o, eth, (size_t)h->end);
    memcpy(o + h->end, eth + h->end + off, len);
    if (h->version == 4) put16(o + h->ip + 4, (rd16(eth + h->ip + 4) + (unsigned)i) & 0xffff);
    be32(o + h->tcp + 4, h->seq + (uint32_t)off);
    int fl = h->flags;
    if (i + 1 < count) fl &= ~(TH_FIN | TH_PSH);
    if (i) {
        fl &= ~(TH_CWR | TH_URG);
        put16(o + h->tcp + 18, 0); /* the urgent pointer is the first segment's */
    }
    o[h->tcp + 13] = (unsigned char)fl;
    tcp_finish(o, h, len, full);
    if (full) vnet_put(out, 0, GSO_NONE, 0, 0, 0, 0);
    else vnet_put(out, VNET_NEEDS_CSUM, GSO_NONE, 0, 0, h->tcp, 16);
    return ETH_AT + (size_t)h->end + len;
}

/* The DATA plaintext at d + HDR (its route header from us to ``peer`` and
   the first frame's length written here, ``size`` bytes in all) sealed in
   place as a one-datagram message of s, its header at d.  Returns the
   datagram's length. */
static size_t seal_data_in_place(Session *s, unsigned char *d, const unsigned char *me,
                                 const unsigned char *peer, uint32_t first_len, size_t size) {
    unsigned char *pt = d + HDR;
    memcpy(pt, me, 6);
    memcpy(pt + 6, peer, 6);
    pt[12] = MAX_HOPS;
    be32(pt + ROUTE_SIZE, first_len);
    uint64_t c = s->counter++;
    d[0] = T_DATA;
    be32(d + 1, s->peer_index);
    be64(d + 5, c);
    d[13] = 0;
    d[14] = 1;
    le64(s->snonce, c);
    s->enc(pt, NULL, pt, size, d, AD, NULL, s->snonce, s->skey);
    s->tx_packets++;
    s->tx_messages++;
    return HDR + size + (size_t)s->tag;
}

/* Seal superframe vf (n bytes) for session s as one DATA message per
   segment (from me to peer, MSS cut down to what fits a datagram), laid out
   in out (cap bytes) at a stride, ready for UDP GSO.  Returns the number of datagrams (*total bytes, *stride each,
   the last maybe shorter), or 0 if the frame is no superframe we cut or the
   session lacks the nonces: the caller seals it whole. */
static size_t seal_tcp_segments(Session *s, const unsigned char *vf, size_t n,
                                const unsigned char *me, const unsigned char *peer,
                                unsigned char *out, size_t cap, size_t *total,
                                size_t *stride) {
    Tcp h;
    size_t mss;
    if (!tcp_superframe(vf, n, &h, &mss)) return 0;
    size_t over = HDR + (size_t)s->tag + PREFIX + ETH_AT + (size_t)h.end;
    if (s->datagram_size < 0 || (size_t)s->datagram_size < over + 64) return 0;
    size_t fit = (size_t)s->datagram_size - over;
    if (mss > fit) mss = fit;
    size_t payload = n - ETH_AT - (size_t)h.end;
    size_t count = (payload + mss - 1) / mss;
    size_t size = over + mss;
    if (count * size > cap || s->limit - s->counter < count || s->counter >= s->limit) return 0;
    size_t at = 0;
    for (size_t i = 0; i < count; i++) {
        /* The plaintext is built where its ciphertext goes, and sealed in
           place (libsodium's AEADs allow it): no copy per segment. */
        unsigned char *d = out + at;
        size_t fl = tcp_segment_one(d + HDR + PREFIX, vf, n, &h, mss, i, count, 0);
        at += seal_data_in_place(s, d, me, peer, (uint32_t)fl, PREFIX + fl);
    }
    s->tx_frames += count;
    s->tx_bytes += payload + count * (size_t)h.end;
    *total = at;
    *stride = size;
    return count;
}

/* ---- coalescing on receive */

typedef struct {
    int used, parts, last_flags, shorter;
    Tcp h;
    size_t len, mss;             /* bytes in buf (virtio header and frame); first payload */
    uint32_t next_seq;
    unsigned id;                 /* the first segment's IPv4 ID */
    unsigned char *buf;          /* ETH_AT + MAX_SUPER */
} Run;

typedef void (*emit_fn)(void *ctx, const unsigned char *p, size_t n);

typedef struct {
    Run runs[NRUNS];
    int next;                    /* the slot to take when all are busy */
    emit_fn emit;
    void *ctx;
    unsigned long long joined, superframes;
} Coalescer;

static int coalescer_init(Coalescer *C, emit_fn emit, void *ctx) {
    memset(C, 0, sizeof *C);
    C->emit = emit;
    C->ctx = ctx;
    for (int i = 0; i < NRUNS; i++) {
        C->runs[i].buf = PyMem_RawMalloc(ETH_AT + MAX_SUPER);
        if (!C->runs[i].buf) return 0;
    }
    return 1;
}

static void coalescer_free(Coalescer *C) {
    for (int i = 0; i < NRUNS; i++) {
        PyMem_RawFree(C->runs[i].buf);
        C->runs[i].buf = NULL;
    }
}

/* The same connection, one direction: addresses and ports. */
static int same_conn(const unsigned char *a, const Tcp *ha, const unsigned char *b,
                     const Tcp *hb) {
    if (ha->version != hb->version || ha->ip_len != hb->ip_len) return 0;
    int at = ha->version == 4 ? 12 : 8, alen = ha->version == 4 ? 8 : 32;
    return memcmp(a + ha->ip + at, b + hb->ip + at, (size_t)alen) == 0 &&
           memcmp(a + ha->tcp, b + hb->tcp, 4) == 0;
}

/* What must be equal for two segments to join (tso._flow_key): the Ethernet
   header, the IP header but its length, ID and checksum, the TCP header but
   its sequence number, checksum, urgent pointer and the flags PSH, FIN, CWR
   and URG. */
static int same_flow(const unsigned char *a, const Tcp *ha, const unsigned char *b,
                     const Tcp *hb) {
    if (ha->version != hb->version || ha->ip_len != hb->ip_len || ha->tcp_len != hb->tcp_len)
        return 0;
    const unsigned char *ia = a + ha->ip, *ib = b + hb->ip, *ta = a + ha->tcp, *tb = b + hb->tcp;
    if (memcmp(a, b, 14) != 0) return 0;
    if (ha->version == 4) {
        if (memcmp(ia, ib, 2) || memcmp(ia + 6, ib + 6, 4) ||
            memcmp(ia + 12, ib + 12, (size_t)ha->ip_len - 12))
            return 0;
    } else if (memcmp(ia, ib, 4) || memcmp(ia + 6, ib + 6, 34)) {
        return 0;
    }
    int mask = ~(TH_PSH | TH_FIN | TH_CWR | TH_URG) & 0xff;
    return memcmp(ta, tb, 4) == 0 && memcmp(ta + 8, tb + 8, 5) == 0 &&
           (ta[13] & mask) == (tb[13] & mask) && memcmp(ta + 14, tb + 14, 2) == 0 &&
           memcmp(ta + 20, tb + 20, (size_t)ha->tcp_len - 20) == 0;
}

static void run_flush(Coalescer *C, Run *r) {
    if (!r->used) return;
    r->used = 0;
    if (r->parts > 1) {
        const Tcp *h = &r->h;
        unsigned char *eth = r->buf + ETH_AT;
        int fl = (eth[h->tcp + 13] & ~(TH_PSH | TH_FIN)) | (r->last_flags & (TH_PSH | TH_FIN));
        eth[h->tcp + 13] = (unsigned char)fl;
        tcp_finish(eth, h, r->len - ETH_AT - (size_t)h->end, 0);
        int gso = (h->version == 4 ? GSO_TCPV4 : GSO_TCPV6) | (fl & TH_CWR ? GSO_ECN : 0);
        vnet_put(r->buf, VNET_NEEDS_CSUM, gso, h->end, (int)r->mss, h->tcp, 16);
        C->superframes++;
        C->joined += (unsigned long long)r->parts;
    }
    C->emit(C->ctx, r->buf, r->len);
}

static void coalescer_flush(Coalescer *C) {
    for (int i = 0; i < NRUNS; i++) run_flush(C, &C->runs[i]);
}

/* Take one frame (virtio header and frame, n bytes) as it arrived: joined to
   its connection's run, or written (a connection's run first, so its order
   holds).  A segment joins only with a checksum the sender's kernel vouched
   for (NEEDS_CSUM or DATA_VALID) and lengths that agree with its IP header. */
static void coalesce_frame(Coalescer *C, const unsigned char *vf, size_t n) {
    Tcp h;
    const unsigned char *eth = vf + ETH_AT;
    if (n < ETH_AT + 14 || vf[1] != GSO_NONE || !tcp_parse(eth, n - ETH_AT, &h)) {
        C->emit(C->ctx, vf, n);
        return;
    }
    size_t iplen = h.version == 4 ? rd16(eth + h.ip + 2) : 40 + (size_t)rd16(eth + h.ip + 4);
    size_t payload = n - ETH_AT - (size_t)h.end;
    int candidate = (vf[0] & (VNET_NEEDS_CSUM | VNET_DATA_VALID)) && payload > 0 &&
                    !(h.flags & (TH_SYN | TH_RST)) && iplen == n - ETH_AT - 14 &&
                    (!(vf[0] & VNET_NEEDS_CSUM) ||
                     ((vf[6] | (vf[7] << 8)) == h.tcp && (vf[8] | (vf[9] << 8)) == 16));
    Run *r = NULL;
    for (int i = 0; i < NRUNS; i++) {
        Run *x = &C->runs[i];
        if (x->used && same_conn(x->buf + ETH_AT, &x->h, eth, &h)) {
            r = x;
            break;
        }
    }
    if (r && candidate && !r->shorter && !(r->last_flags & (TH_PSH | TH_FIN)) &&
        h.seq == r->next_seq && payload <= r->mss && !(h.flags & (TH_CWR | TH_URG)) &&
        r->len + payload <= ETH_AT + MAX_SUPER &&
        (h.version == 6 || rd16(eth + h.ip + 4) == ((r->id + (unsigned)r->parts) & 0xffff)) &&
        same_flow(r->buf + ETH_AT, &r->h, eth, &h)) {
        memcpy(r->buf + r->len, eth + h.end, payload);
        r->len += payload;
        r->parts++;
        r->next_seq += (uint32_t)payload;
        r->last_flags = h.flags;
        r->shorter = payload < r->mss;
        if (r->shorter || (h.flags & (TH_PSH | TH_FIN))) run_flush(C, r); /* nothing may follow */
        return;
    }
    if (r) run_flush(C, r);
    if (!candidate) {
        C->emit(C->ctx, vf, n);
        return;
    }
    if (!r) {
        for (int i = 0; i < NRUNS && !r; i++)
            if (!C->runs[i].used) r = &C->runs[i];
        if (!r) {
            r = &C->runs[C->next];
            C->next = (C->next + 1) % NRUNS;
            run_flush(C, r);
        }
    }
    memcpy(r->buf, vf, n);
    r->used = 1;
    r->parts = 1;
    r->h = h;
    r->len = n;
    r->mss = payload;
    r->next_seq = h.seq + (uint32_t)payload;
    r->id = h.version == 4 ? rd16(eth + h.ip + 4) : 0;
    r->last_flags = h.flags;
    r->shorter = 0;
    if (h.flags & (TH_PSH | TH_FIN)) run_flush(C, r);
}

/* --------------------------------------------------------------------- Loop */

typedef struct {
    unsigned char mac[6], src[6], peer[6], hop[6];
    unsigned gen;
    Session *s;     /* owned reference: the next hop's */
    Session *inner; /* owned, or NULL: the peer's own, when the hop is a relay */
    double learned_at;
    long alone_above;
} Lane;

typedef struct {
    unsigned int index;
    unsigned gen;
    Session *s; /* owned reference */
} Bound;

typedef struct { /* where messages to a peer go on when we relay them */
    unsigned char dst[6], hop[6];
    unsigned gen;
    Session *s; /* owned reference: the next hop's */
} Relay;

typedef struct { /* a session whose datagrams come inside a relay's messages */
    unsigned int index;
    unsigned gen;
    unsigned char peer[6];
    Session *s; /* owned reference */
} Sealed;

typedef struct {
    unsigned char mac[6], origin[6];
    unsigned gen;
    double learned_at;
} Seen;

typedef struct {
    PyObject_HEAD
    int tap_fd, udp_fd, wake_fd, epfd;
    unsigned char me[6];
    Py_buffer frame_b, recv_b, plain_b, name_b;
    int have_buffers;
    unsigned char *frame, *recv, *plain, *name;
    size_t frame_cap, recv_cap, plain_cap, ct_cap;
    unsigned char *ct;
    unsigned char *seg_out;               /* a superframe's sealed segments */
    unsigned char *wrap_out;              /* ... each inside a message to a relay */
    unsigned char *plain2;                /* what was sealed inside a relayed message */
    Coalescer co;                         /* segments joined on their way to the TAP */
    int have_co, join;                    /* join: the TAP takes superframes */
    unsigned char *pack; /* small frames of one drain to one (next hop, peer), as Python packs */
    size_t pack_len, pack_limit;
    int pack_frames;
    Session *pack_s; /* borrowed: a lane holds it */
    unsigned char pack_hop[6];
    unsigned char hdrs[MAX_SEGMENTS][HDR];
    struct iovec iov[2 * MAX_SEGMENTS];
    unsigned char control[64];
    unsigned gen, seen_epoch, epoch;
    Lane lanes[NLANES];
    Bound bound[NBOUND];
    Sealed sealed[NSEALED];
    Relay relays[NRELAYS];
    Seen seen[NSEEN];
    int gso;
    int family; /* of the UDP socket: AF_INET, or AF_INET6 (dual-stack or not) */
    int tap_more, udp_more, first, handed, wrote;
    double busy_poll;
    /* what the last event is about */
    int ev_n, ev_first, ev_off, ev_seg, ev_next, ev_len, ev_dlen, ev_type;
    unsigned int ev_index;
    unsigned char ev_hop[6];
    unsigned long long counts[NCOUNTS];
    unsigned long long send_errors[NERRNO];
} Loop;

static void sync_epoch(Loop *L) {
    unsigned e = __atomic_load_n(&L->epoch, __ATOMIC_ACQUIRE);
    if (e != L->seen_epoch) {
        L->seen_epoch = e;
        L->gen++;
    }
}

static int send_failed(Loop *L, const unsigned char *hop) {
    int e = errno;
    if (e == EMSGSIZE) {
        memcpy(L->ev_hop, hop, 6);
        L->send_errors[EMSGSIZE]++;
        return EV_TOO_SMALL;
    }
    L->send_errors[e > 0 && e < NERRNO ? e : 0]++;
    return 0;
}

/* Where to send to s on this loop's socket: NULL (errno EAFNOSUPPORT) for
   an IPv6 peer on an IPv4 socket. */
static void *dest(Loop *L, Session *s, socklen_t *len) {
    if (L->family == AF_INET6) {
        *len = sizeof s->addr6;
        return &s->addr6;
    }
    if (s->has_addr == AF_INET) {
        *len = sizeof s->addr4;
        return &s->addr4;
    }
    errno = EAFNOSUPPORT;
    return NULL;
}

/* Whether the last datagram read (its sender in L->name) came from s. */
static int same_addr(const Loop *L, const Session *s) {
    if (!s->has_addr) return 0;
    sa_family_t fam;
    memcpy(&fam, L->name, sizeof fam);
    if (fam == AF_INET6) {
        const struct sockaddr_in6 *a = (const struct sockaddr_in6 *)(const void *)L->name;
        return a->sin6_port == s->addr6.sin6_port &&
               memcmp(&a->sin6_addr, &s->addr6.sin6_addr, 16) == 0;
    }
    if (fam == AF_INET && s->has_addr == AF_INET) {
        const struct sockaddr_in *a = (const struct sockaddr_in *)(const void *)L->name;
        return a->sin_port == s->addr4.sin_port && a->sin_addr.s_addr == s->addr4.sin_addr.s_addr;
    }
    return 0;
}

/* One sendmsg of cnt datagrams of dsize bytes (the last maybe shorter) in
   iov to s, with UDP_SEGMENT when several: 0 sent, -1 to be sent again (GSO
   just fell back to plain sends for good), or an event. */
static int gso_sendmsg(Loop *L, Session *s, struct iovec *iov, size_t iovlen, size_t cnt,
                       size_t dsize, const unsigned char *hop) {
    union {
        char buf[CMSG_SPACE(sizeof(uint16_t))];
        struct cmsghdr align;
    } cm;
    socklen_t nlen;
    void *name = dest(L, s, &nlen);
    if (!name) return send_failed(L, hop);
    struct msghdr m = {.msg_name = name, .msg_namelen = nlen, .msg_iov = iov, .msg_iovlen = iovlen};
    if (cnt > 1) {
        memset(&cm, 0, sizeof cm);
        m.msg_control = cm.buf;
        m.msg_controllen = sizeof cm.buf;
        struct cmsghdr *cmsg = CMSG_FIRSTHDR(&m);
        cmsg->cmsg_level = SOL_UDP_;
        cmsg->cmsg_type = UDP_SEGMENT_;
        cmsg->cmsg_len = CMSG_LEN(sizeof(uint16_t));
        uint16_t seg = (uint16_t)dsize;
        memcpy(CMSG_DATA(cmsg), &seg, sizeof seg);
    }
    if (sendmsg(L->udp_fd, &m, 0) < 0) {
        if (cnt > 1 && (errno == EIO || errno == EINVAL || errno == ENOPROTOOPT)) {
            L->gso = 0; /* the kernel or device cannot: plain sends from now on */
            L->counts[D_GSO_FALLBACK]++;
            return -1;
        }
        return send_failed(L, hop);
    }
    if (cnt > 1) L->counts[C_GSO_SENDS]++;
    return 0;
}

/* Seal ``size`` bytes at ``pt`` as one message of ``type`` and send it. */
static int seal_send(Loop *L, Session *s, int type, const unsigned char *pt, size_t size,
                     const unsigned char *hop) {
    if (s->datagram_size < HDR + s->tag + 64) { /* never from pmtu: a caller's mistake */
        L->counts[D_TOO_LARGE]++;
        return 0;
    }
    uint64_t c = s->counter++;
    size_t room = (size_t)s->datagram_size - HDR;
    size_t ctlen = size + (size_t)s->tag;
    unsigned char *h = L->hdrs[0];
    h[0] = (unsigned char)type;
    be32(h + 1, s->peer_index);
    be64(h + 5, c);
    le64(s->snonce, c);
    if (ctlen <= room) {
        h[13] = 0;
        h[14] = 1;
        s->enc(L->ct, NULL, pt, size, h, AD, NULL, s->snonce, s->skey);
        struct iovec iov[2] = {{h, HDR}, {L->ct, ctlen}};
        socklen_t nlen;
        void *name = dest(L, s, &nlen);
        if (!name) return send_failed(L, hop);
        struct msghdr m = {.msg_name = name, .msg_namelen = nlen, .msg_iov = iov, .msg_iovlen = 2};
        s->tx_packets++;
        s->tx_messages++;
        if (sendmsg(L->udp_fd, &m, 0) < 0) return send_failed(L, hop);
        return 0;
    }
    size_t nseg = (ctlen + room - 1) / room;
    if (nseg > MAX_SEGMENTS || ctlen > L->ct_cap) {
        L->counts[D_TOO_LARGE]++;
        return 0;
    }
    h[13] = 0;
    h[14] = (unsigned char)nseg;
    s->enc(L->ct, NULL, pt, size, h, AD, NULL, s->snonce, s->skey);
    for (size_t i = 0; i < nseg; i++) {
        if (i) memcpy(L->hdrs[i], h, HDR);
        L->hdrs[i][13] = (unsigned char)i;
        L->iov[2 * i].iov_base = L->hdrs[i];
        L->iov[2 * i].iov_len = HDR;
        L->iov[2 * i + 1].iov_base = L->ct + i * room;
        L->iov[2 * i + 1].iov_len = i + 1 < nseg ? room : ctlen - i * room;
    }
    s->tx_packets += nseg;
    s->tx_messages++;
    size_t dsize = room + HDR;
    size_t start = 0;
    while (start < nseg) {
        size_t per = L->gso ? GSO_MAX / dsize : 1;
        if (per < 1) per = 1;
        size_t cnt = nseg - start < per ? nseg - start : per;
        int r = gso_sendmsg(L, s, L->iov + 2 * start, 2 * cnt, cnt, dsize, hop);
        if (r < 0) continue;
        if (r) return r;
        start += cnt;
    }
    return 0;
}

/* Send count datagrams laid out at out (total bytes, stride each, the last
   maybe shorter) to s: UDP GSO sends of at most MAX_SEGMENTS and GSO_MAX. */
static int send_laid_out(Loop *L, Session *s, const unsigned char *out, size_t total,
                         size_t stride, size_t count, const unsigned char *hop) {
    size_t start = 0;
    while (start < count) {
        size_t per = L->gso ? GSO_MAX / stride : 1;
        if (per < 1) per = 1;
        if (per > MAX_SEGMENTS) per = MAX_SEGMENTS;
        size_t cnt = count - start < per ? count - start : per;
        size_t len = start + cnt < count ? cnt * stride : total - start * stride;
        struct iovec iov = {(void *)(out + start * stride), len};
        int r = gso_sendmsg(L, s, &iov, 1, cnt, stride, hop);
        if (r < 0) continue;
        if (r) return r;
        start += cnt;
    }
    return 0;
}

/* A TCP superframe on a lane, cut and sealed segment by segment (issue 22);
   -1 if it is none (the caller seals it whole). */
static int send_segments(Loop *L, const Lane *ln, const unsigned char *vf, size_t n) {
    size_t total, stride;
    Session *s = ln->s;
    size_t count =
        seal_tcp_segments(s, vf, n, L->me, ln->peer, L->seg_out, SEG_OUT, &total, &stride);
    if (!count) return -1;
    L->counts[C_SUPERFRAMES_CUT]++;
    L->counts[C_SEGMENTS_SEALED] += count;
    return send_laid_out(L, s, L->seg_out, total, stride, count, ln->hop);
}

/* Seal the inner datagram at ``in`` (``ilen`` bytes, sealed for ``peer``)
   as a message of its own from us to peer for hop session s, at ``d``:
   route header, a first frame length of 0 (send._send_through), the
   datagram.  Returns the datagram's length. */
static size_t wrap_one(Loop *L, Session *s, unsigned char *d, const unsigned char *in,
                       size_t ilen, const unsigned char *peer) {
    if (in != d + HDR + PREFIX) memmove(d + HDR + PREFIX, in, ilen);
    return seal_data_in_place(s, d, L->me, peer, 0, PREFIX + ilen);
}

/* A frame on a lane beyond a relay (ln->inner: our session with the peer
   itself): sealed with that session (a TCP superframe segment by segment)
   into datagrams that fit inside one message to the hop each, and those
   sent to the hop (send._send_through, which does the same).  The frame is
   at buf + PREFIX.  -1 if it needs more than this (a large frame without
   TSO): Python seals it. */
static int send_through(Loop *L, const Lane *ln, unsigned char *buf, size_t n) {
    Session *s = ln->s, *in = ln->inner;
    long room = (long)s->datagram_size - WRAP - s->tag; /* an inner datagram, whole */
    if (room < HDR + in->tag + PREFIX + MIN_FRAME) return -1;
    size_t over = (size_t)(WRAP + s->tag);
    const unsigned char *vf = buf + PREFIX;
    size_t total = 0, stride = 0, count = 0;
    if (vf[1] != GSO_NONE) {
        int saved = in->datagram_size;
        in->datagram_size = (int)room; /* this thread's, for this call only */
        count = seal_tcp_segments(in, vf, n, L->me, ln->peer, L->seg_out, SEG_OUT, &total, &stride);
        in->datagram_size = saved;
    }
    if (count) {
        size_t ostride = stride + over;
        if ((count - 1) * ostride + over + (total - (count - 1) * stride) > WRAP_OUT) return -1;
        if (s->limit - s->counter < count) return -1;
        size_t at = 0;
        for (size_t i = 0; i < count; i++) {
            size_t ilen = i + 1 < count ? stride : total - i * stride;
            at = i * ostride + wrap_one(L, s, L->wrap_out + i * ostride, L->seg_out + i * stride,
                                        ilen, ln->peer);
        }
        L->counts[C_SUPERFRAMES_CUT]++;
        L->counts[C_SEGMENTS_SEALED] += count;
        L->counts[C_SEALED_END_TO_END] += count;
        return send_laid_out(L, s, L->wrap_out, at, ostride, count, ln->hop);
    }
    size_t ilen = HDR + PREFIX + n + (size_t)in->tag;
    if (ilen > (size_t)room || in->counter >= in->limit || s->counter >= s->limit) return -1;
    /* The inner datagram is built where the outer message's payload goes,
       and both are sealed in place. */
    unsigned char *d = L->wrap_out + WRAP;
    memcpy(d + HDR + PREFIX, vf, n);
    seal_data_in_place(in, d, L->me, ln->peer, (uint32_t)n, PREFIX + n);
    in->tx_frames++;
    in->tx_bytes += (unsigned long long)(n - ETH_AT);
    size_t len = wrap_one(L, s, L->wrap_out, d, ilen, ln->peer);
    L->counts[C_SEALED_END_TO_END]++;
    return send_laid_out(L, s, L->wrap_out, len, len, 1, ln->hop);
}

/* Send the small frames packed so far as one message. */
static int flush_pack(Loop *L) {
    if (!L->pack_frames) return 0;
    L->pack_frames = 0;
    return seal_send(L, L->pack_s, T_DATA, L->pack, L->pack_len, L->pack_hop);
}

/* Pack a small frame behind others of this drain to the same peer (the
   message's route header names the destination peer, not the MAC). */
static int pack_frame(Loop *L, const Lane *ln, const unsigned char *frame, size_t n) {
    int r = 0;
    size_t limit = (size_t)ln->alone_above + PREFIX;
    if (L->pack_frames && (L->pack_s != ln->s || memcmp(L->pack + 6, ln->peer, 6) != 0 ||
                           L->pack_len + 4 + n > L->pack_limit))
        r = flush_pack(L);
    if (!L->pack_frames) {
        memcpy(L->pack, L->me, 6);
        memcpy(L->pack + 6, ln->peer, 6);
        L->pack[12] = MAX_HOPS;
        L->pack_len = ROUTE_SIZE;
        L->pack_limit = limit < L->ct_cap ? limit : L->ct_cap;
        L->pack_s = ln->s;
        memcpy(L->pack_hop, ln->hop, 6);
    }
    be32(L->pack + L->pack_len, (uint32_t)n);
    memcpy(L->pack + L->pack_len + 4, frame, n);
    L->pack_len += 4 + n;
    L->pack_frames++;
    return r;
}

/* Read the TAP until it would block; returns an event for Python, or 0. */
static int drain_tap(Loop *L, double now) {
    unsigned char *buf = L->frame;
    size_t cap = L->frame_cap - PREFIX;
    int r;
    for (int i = 0; i < DRAIN; i++) {
        ssize_t n = read(L->tap_fd, buf + PREFIX, cap);
        if (n < 0) {
            if (errno == EINTR) continue;
            if (errno != EAGAIN) L->counts[D_TAP_READ_ERROR]++;
            L->tap_more = 0;
            L->first = 1;
            if ((r = flush_pack(L))) return r;
            if (L->handed) {
                L->handed = 0;
                return EV_TAP_DONE;
            }
            return 0;
        }
        if (n < MIN_FRAME) {
            L->counts[D_TAP_RUNT]++;
            continue;
        }
        const unsigned char *eth = buf + PREFIX + ETH_AT;
        Lane *ln = &L->lanes[mac_hash(eth, NLANES)];
        Session *s = ln->s;
        if (s && ln->gen == L->gen && memcmp(ln->mac, eth, 6) == 0 &&
            memcmp(ln->src, eth + 6, 6) == 0 && now - ln->learned_at <= RELEARN &&
            s->has_addr && s->counter < s->limit) {
            if (ln->inner) { /* beyond a relay: sealed for the peer alone, never packed */
                if ((r = flush_pack(L))) return r;
                r = send_through(L, ln, buf, (size_t)n);
                if (r > 0) return r;
                if (r == 0) {
                    L->first = 0;
                    L->counts[C_FRAMES_SENT]++;
                    continue;
                }
                goto to_python;
            }
            s->tx_frames++;
            s->tx_bytes += (unsigned long long)(n - ETH_AT);
            L->counts[C_FRAMES_SENT]++;
            if (!L->first && n <= ln->alone_above) {
                if ((r = pack_frame(L, ln, buf + PREFIX, (size_t)n))) return r;
                continue;
            }
            L->first = 0;
            if ((r = flush_pack(L))) return r; /* what came before goes first */
            if (buf[PREFIX + 1] != GSO_NONE) {
                s->tx_frames--; /* counted per segment */
                s->tx_bytes -= (unsigned long long)(n - ETH_AT);
                r = send_segments(L, ln, buf + PREFIX, (size_t)n);
                if (r > 0) return r;
                if (r == 0) continue;
                s->tx_frames++;
                s->tx_bytes += (unsigned long long)(n - ETH_AT);
            }
            memcpy(buf, L->me, 6);
            memcpy(buf + 6, ln->peer, 6);
            buf[12] = MAX_HOPS;
            be32(buf + 13, (uint32_t)n);
            if ((r = seal_send(L, s, T_DATA, buf, PREFIX + (size_t)n, ln->hop))) return r;
            continue;
        }
    to_python:
        if ((r = flush_pack(L))) { /* rare: the frame is lost with the failed send */
            L->first = 0;
            return r;
        }
        L->ev_n = (int)n;
        L->ev_first = L->first;
        L->first = 0;
        L->handed = 1;
        L->counts[C_FRAMES_TO_PYTHON]++;
        return EV_TAP;
    }
    if ((r = flush_pack(L))) return r;
    if (L->handed) { /* Python's packed frames go before the next batch */
        L->handed = 0;
        return EV_TAP_DONE;
    }
    return 0;
}

static void tap_emit(void *ctx, const unsigned char *p, size_t n);

/* Whether every frame of the DATA plaintext p (plen bytes, route header
   first) is whole and from a MAC seen at its origin lately. */
static int frames_seen(const Loop *L, const unsigned char *p, size_t plen, double now) {
    size_t pos = ROUTE_SIZE;
    while (pos < plen) {
        if (plen - pos < 4) return 0;
        size_t fl = rd32(p + pos);
        pos += 4;
        if (fl < MIN_FRAME || fl > plen - pos) return 0;
        const unsigned char *src = p + pos + ETH_AT + 6;
        const Seen *sn = &L->seen[mac_hash(src, NSEEN)];
        if (sn->gen != L->gen || memcmp(sn->mac, src, 6) != 0 || memcmp(sn->origin, p, 6) != 0 ||
            now - sn->learned_at > RELEARN)
            return 0;
        pos += fl;
    }
    return 1;
}

/* Its frames to the TAP (through the coalescer when joining). */
static void deliver_frames(Loop *L, Session *s, const unsigned char *p, size_t plen) {
    for (size_t pos = ROUTE_SIZE; pos < plen;) {
        size_t fl = rd32(p + pos);
        pos += 4;
        if (L->join) coalesce_frame(&L->co, p + pos, fl);
        else tap_emit(L, p + pos, fl);
        s->rx_frames++;
        s->rx_bytes += fl - ETH_AT;
        pos += fl;
    }
    L->counts[C_MESSAGES_DELIVERED]++;
}

/* The DATA plaintext p for us (plen bytes) carries a datagram its origin
   sealed for us alone (a first frame length of 0): opened with our session
   with the origin when Python bound it (``bind_sealed``), its frames to the
   TAP.  0 if done, else EV_PLAIN: Python takes the outer plaintext, still
   in L->plain, and opens it again (nothing was accepted here). */
static int open_through(Loop *L, const unsigned char *p, size_t plen, double now) {
    const unsigned char *ib = p + PREFIX;
    size_t ilen = plen - PREFIX;
    if (ilen < HDR || ib[0] != T_DATA || ib[13] != 0 || ib[14] != 1) return EV_PLAIN;
    unsigned int index = rd32(ib + 1);
    uint64_t c = rd64(ib + 5);
    Sealed *sd = &L->sealed[index & (NSEALED - 1)];
    Session *s = sd->s;
    if (!s || sd->gen != L->gen || sd->index != index || memcmp(sd->peer, p, 6) != 0)
        return EV_PLAIN;
    size_t ctlen = ilen - HDR;
    if (ctlen < (size_t)s->tag || ctlen > L->plain_cap || !replay_would(s, c)) return EV_PLAIN;
    le64(s->rnonce, c);
    if (s->dec(L->plain2, NULL, NULL, ib + HDR, ctlen, ib, AD, s->rnonce, s->rkey) != 0)
        return EV_PLAIN;
    size_t qlen = ctlen - (size_t)s->tag;
    const unsigned char *q = L->plain2;
    if (qlen < PREFIX || memcmp(q, p, 6) != 0 || memcmp(q + 6, L->me, 6) != 0 ||
        !frames_seen(L, q, qlen, now))
        return EV_PLAIN;
    replay_accept(s, c); /* relayed: says nothing of a UDP path to it (no heard_at) */
    s->rx_packets++;
    s->rx_messages++;
    deliver_frames(L, s, q, qlen);
    L->counts[C_OPENED_END_TO_END]++;
    return 0;
}

/* The DATA plaintext in L->plain (plen bytes) is for another peer: passed
   on to the next hop Python relayed the last one to (``set_relay``),
   re-sealed for it, hop limit down by one.  0 if done, else EV_PLAIN:
   Python relays it (a hop limit reached, no relay taught, a send the path
   is too small for: Python shrinks it), nothing changed. */
static int relay_on(Loop *L, size_t plen) {
    unsigned char *p = L->plain;
    const Relay *rl = &L->relays[mac_hash(p + 6, NRELAYS)];
    Session *h = rl->s;
    if (!h || rl->gen != L->gen || memcmp(rl->dst, p + 6, 6) != 0 || p[12] == 0 ||
        !h->has_addr || h->counter >= h->limit)
        return EV_PLAIN;
    p[12]--;
    int r = seal_send(L, h, T_DATA, p, plen, rl->hop);
    if (r) {
        p[12]++;
        return EV_PLAIN;
    }
    L->counts[C_MESSAGES_RELAYED]++;
    if (rd32(p + ROUTE_SIZE) == 0) L->counts[C_RELAYED_UNREAD]++;
    return 0;
}

/* One datagram at ``off`` of a read of ``n`` bytes in segments of ``seg``
   (several, when GRO coalesced them): 0 if handled (``*next`` is where the
   next datagram starts), else the event that hands it to Python. */
static int fast_datagram(Loop *L, int off, int n, int seg, double now, int *next) {
    unsigned char *b = L->recv + off;
    int end = off + seg < n ? off + seg : n;
    int len = end - off;
    *next = end;
    if (len < HDR) return EV_UDP;
    int type = b[0], sg = b[13], ns = b[14];
    unsigned int index = rd32(b + 1);
    uint64_t c = rd64(b + 5);
    if ((type != T_DATA && type != T_HEARTBEAT) || !(sg < ns && ns <= MAX_SEGMENTS))
        return EV_UDP;
    Bound *bd = &L->bound[index & (NBOUND - 1)];
    Session *s = bd->s;
    if (!s || bd->gen != L->gen || bd->index != index) return EV_UDP;
    if (!same_addr(L, s)) return EV_UDP; /* the peer moved: Python follows it */
    const unsigned char *ct;
    size_t ctlen;
    int stop = end;
    if (ns == 1) {
        ct = b + HDR;
        ctlen = (size_t)(len - HDR);
    } else {
        /* A whole message in this read, in order (GRO coalesces one GSO send). */
        if (sg != 0 || seg <= HDR) return EV_UDP;
        long last = off + (long)(ns - 1) * seg;
        if (last + HDR >= n) return EV_UDP;
        const unsigned char *lb = L->recv + last;
        if (lb[13] != ns - 1 || rd64(lb + 5) != c) return EV_UDP;
        stop = last + seg < n ? (int)(last + seg) : n;
        size_t room = (size_t)(seg - HDR), lastlen = (size_t)(stop - last - HDR);
        ctlen = (size_t)(ns - 1) * room + lastlen;
        if (ctlen > L->ct_cap) return EV_UDP;
        for (int i = 0; i < ns - 1; i++)
            memcpy(L->ct + (size_t)i * room, L->recv + off + (long)i * seg + HDR, room);
        memcpy(L->ct + (size_t)(ns - 1) * room, lb + HDR, lastlen);
        ct = L->ct;
    }
    if (ctlen < (size_t)s->tag || ctlen > L->plain_cap || !replay_would(s, c)) return EV_UDP;
    le64(s->rnonce, c);
    if (s->dec(L->plain, NULL, NULL, ct, ctlen, b, AD, s->rnonce, s->rkey) != 0) return EV_UDP;
    replay_accept(s, c);
    *next = stop;
    s->heard_at = now;
    s->rx_packets += (unsigned long long)ns;
    s->rx_messages++;
    size_t plen = ctlen - (size_t)s->tag;
    L->ev_index = index;
    L->ev_type = type;
    L->ev_len = (int)plen;
    L->ev_dlen = len;
    const unsigned char *p = L->plain;
    if (type != T_DATA || plen < PREFIX || memcmp(p, L->me, 6) == 0)
        return EV_PLAIN; /* a heartbeat, or wrong */
    if (memcmp(p + 6, L->me, 6) != 0)
        return relay_on(L, plen); /* for another (a broadcast is never taught) */
    if (rd32(p + ROUTE_SIZE) == 0) return open_through(L, p, plen, now);
    if (!frames_seen(L, p, plen, now)) return EV_PLAIN;
    deliver_frames(L, s, p, plen);
    return 0;
}

/* The coalescer's output: the TAP. */
static void tap_emit(void *ctx, const unsigned char *p, size_t n) {
    Loop *L = ctx;
    if (L->tap_fd >= 0 && write(L->tap_fd, p, n) < 0)
        L->counts[errno == EAGAIN ? D_TAP_WRITE_BLOCK : D_TAP_WRITE_ERROR]++;
    L->wrote = 1;
}

static void flush_joined(Loop *L) {
    coalescer_flush(&L->co);
    L->counts[C_SUPERFRAMES_JOINED] = L->co.superframes;
    L->counts[C_SEGMENTS_JOINED] = L->co.joined;
}

static int drain_udp_reads(Loop *L, double now);

/* Read datagrams until the socket would block (or DRAIN reads); segments
   are joined across reads and written when the drain ends, before an event
   goes to Python, or when a run must end. */
static int drain_udp(Loop *L, double now) {
    int r = drain_udp_reads(L, now);
    flush_joined(L);
    return r;
}

static int drain_udp_reads(Loop *L, double now) {
    for (int i = 0; i < DRAIN; i++) {
        struct iovec iov = {L->recv, L->recv_cap};
        struct msghdr m = {.msg_name = L->name, .msg_namelen = NAME_SIZE, .msg_iov = &iov,
                           .msg_iovlen = 1, .msg_control = L->control,
                           .msg_controllen = sizeof L->control};
        ssize_t got = recvmsg(L->udp_fd, &m, 0);
        if (got < 0) {
            if (errno == EINTR) continue;
            if (errno != EAGAIN) L->counts[D_UDP_RECV_ERROR]++;
            L->udp_more = 0;
            return 0;
        }
        int n = (int)got, seg = n;
        for (struct cmsghdr *c = CMSG_FIRSTHDR(&m); c; c = CMSG_NXTHDR(&m, c)) {
            if (c->cmsg_level == SOL_UDP_ && c->cmsg_type == UDP_GRO_) {
                int v;
                memcpy(&v, CMSG_DATA(c), sizeof v);
                if (v > 0) seg = v;
            }
        }
        if (n == 0) L->counts[D_EMPTY]++;
        for (int off = 0; off < n;) {
            int next, r = fast_datagram(L, off, n, seg, now, &next);
            if (r) {
                L->ev_off = off;
                L->ev_n = n;
                L->ev_seg = seg;
                L->ev_next = next;
                L->tap_more = 1; /* a reply may wait (and Python may write the TAP) */
                L->counts[C_DATAGRAMS_TO_PYTHON]++;
                return r;
            }
            off = next;
        }
        if (L->wrote) { /* the kernel handled what we wrote: a reply may wait already */
            L->wrote = 0;
            L->tap_more = 1;
            if (L->tap_fd >= 0) {
                int r = drain_tap(L, now);
                if (r) return r;
            }
        }
    }
    return 0;
}

/* Return ``ev`` to Python.  A pack still pending here (a send failed while
   flushing it) is dropped: its session must not be used once Python may
   change the lanes. */
static int leave(Loop *L, int ev) {
    if (L->pack_frames) {
        L->counts[D_PACK_LOST] += (unsigned long long)L->pack_frames;
        L->pack_frames = 0;
    }
    return ev;
}

static int loop_run(Loop *L, double now0, double timeout) {
    double t0 = mono(), busy_until = 0.0;
    struct epoll_event evs[8];
    for (;;) {
        sync_epoch(L);
        double t = mono();
        int expired = t - t0 >= timeout, wait_ms = 0;
        if (!expired && !L->tap_more && !L->udp_more && t >= busy_until)
            wait_ms = (int)((timeout - (t - t0)) * 1000.0) + 1;
        int n = epoll_wait(L->epfd, evs, 8, wait_ms);
        if (n < 0) {
            if (errno == EINTR) continue;
            return EV_TIMEOUT;
        }
        for (int i = 0; i < n; i++) {
            int fd = evs[i].data.fd;
            if (fd == L->wake_fd) return EV_WAKE;
            if (fd == L->udp_fd) L->udp_more = 1;
            else if (fd == L->tap_fd) L->tap_more = 1;
        }
        double now = now0 + (mono() - t0);
        if (n > 0 && L->busy_poll > 0) busy_until = mono() + L->busy_poll;
        int r;
        if (L->udp_more && (r = drain_udp(L, now))) return leave(L, r);
        if (L->tap_fd < 0) L->tap_more = 0;
        if (L->tap_more && (r = drain_tap(L, now))) return leave(L, r);
        if (expired || (n == 0 && wait_ms > 0)) return EV_TIMEOUT; /* Python's timers */
        if (n == 0 && mono() < busy_until) sched_yield();
    }
}

static int Loop_init(Loop *self, PyObject *args, PyObject *kw) {
    static char *names[] = {"tap_fd", "udp_fd", "wake_fd", "me", "frame", "recv",
                            "plain", "name", "gso", "busy_poll", "join", NULL};
    Py_buffer me;
    if (self->have_buffers) {
        PyErr_SetString(PyExc_RuntimeError, "Loop initialised twice");
        return -1;
    }
    self->join = 1;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "iiiy*w*w*w*w*pd|p", names, &self->tap_fd,
                                     &self->udp_fd, &self->wake_fd, &me, &self->frame_b,
                                     &self->recv_b, &self->plain_b, &self->name_b, &self->gso,
                                     &self->busy_poll, &self->join))
        return -1;
    self->have_buffers = 1;
    int ok = me.len == 6 && self->frame_b.len > PREFIX + MIN_FRAME && (size_t)self->name_b.len >= NAME_SIZE &&
             self->recv_b.len > HDR && self->plain_b.len > PREFIX;
    if (ok) memcpy(self->me, me.buf, 6);
    PyBuffer_Release(&me);
    if (!ok) {
        PyErr_SetString(PyExc_ValueError, "bad loop buffers or name");
        return -1;
    }
    self->frame = self->frame_b.buf;
    self->frame_cap = (size_t)self->frame_b.len;
    self->recv = self->recv_b.buf;
    self->recv_cap = (size_t)self->recv_b.len;
    self->plain = self->plain_b.buf;
    self->plain_cap = (size_t)self->plain_b.len;
    self->name = self->name_b.buf;
    struct sockaddr_storage bound;
    socklen_t blen = sizeof bound;
    self->family = getsockname(self->udp_fd, (struct sockaddr *)&bound, &blen) == 0
                       ? bound.ss_family
                       : AF_INET;
    self->ct_cap = (self->frame_cap > self->plain_cap ? self->frame_cap : self->plain_cap) + 128;
    self->ct = PyMem_RawMalloc(self->ct_cap);
    self->pack = PyMem_RawMalloc(self->ct_cap);
    self->seg_out = PyMem_RawMalloc(SEG_OUT);
    self->wrap_out = PyMem_RawMalloc(WRAP_OUT);
    self->plain2 = PyMem_RawMalloc(self->plain_cap);
    self->have_co = coalescer_init(&self->co, tap_emit, self);
    if (!self->ct || !self->pack || !self->seg_out || !self->wrap_out || !self->plain2 ||
        !self->have_co) {
        PyErr_NoMemory();
        return -1;
    }
    self->epfd = epoll_create1(EPOLL_CLOEXEC);
    if (self->epfd < 0) {
        PyErr_SetFromErrno(PyExc_OSError);
        return -1;
    }
    int fds[3] = {self->wake_fd, self->udp_fd, self->tap_fd};
    for (int i = 0; i < 3; i++) {
        if (fds[i] < 0) continue;
        struct epoll_event ev = {.events = EPOLLIN, .data.fd = fds[i]};
        if (epoll_ctl(self->epfd, EPOLL_CTL_ADD, fds[i], &ev) < 0) {
            PyErr_SetFromErrno(PyExc_OSError);
            return -1;
        }
    }
    self->gen = 1;
    self->first = 1;
    self->tap_more = self->udp_more = 1; /* look before the first wait */
    return 0;
}

static void Loop_clear_refs(Loop *self) {
    for (int i = 0; i < NLANES; i++) {
        Py_CLEAR(self->lanes[i].s);
        Py_CLEAR(self->lanes[i].inner);
    }
    for (int i = 0; i < NBOUND; i++) Py_CLEAR(self->bound[i].s);
    for (int i = 0; i < NSEALED; i++) Py_CLEAR(self->sealed[i].s);
    for (int i = 0; i < NRELAYS; i++) Py_CLEAR(self->relays[i].s);
}

static void Loop_dealloc(Loop *self) {
    Loop_clear_refs(self);
    if (self->have_buffers) {
        PyBuffer_Release(&self->frame_b);
        PyBuffer_Release(&self->recv_b);
        PyBuffer_Release(&self->plain_b);
        PyBuffer_Release(&self->name_b);
    }
    if (self->epfd > 0) close(self->epfd);
    PyMem_RawFree(self->ct);
    PyMem_RawFree(self->pack);
    PyMem_RawFree(self->seg_out);
    PyMem_RawFree(self->wrap_out);
    PyMem_RawFree(self->plain2);
    coalescer_free(&self->co);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyObject *Loop_new(PyTypeObject *type, PyObject *args, PyObject *kw) {
    Loop *self = (Loop *)type->tp_alloc(type, 0); /* zeroed */
    if (self) self->epfd = -1;
    return (PyObject *)self;
}

static PyObject *Loop_run(Loop *self, PyObject *args) {
    double now, timeout;
    if (!PyArg_ParseTuple(args, "dd", &now, &timeout)) return NULL;
    if (!self->have_buffers || self->epfd < 0) {
        PyErr_SetString(PyExc_RuntimeError, "Loop not initialised");
        return NULL;
    }
    int ev;
    Py_BEGIN_ALLOW_THREADS
    ev = loop_run(self, now, timeout);
    Py_END_ALLOW_THREADS
    return PyLong_FromLong(ev);
}

static int mac_arg(Py_buffer *b, const char *what) {
    if (b->len != 6) {
        PyErr_Format(PyExc_ValueError, "%s must be 6 bytes", what);
        return 0;
    }
    return 1;
}

static PyObject *Loop_set_lane(Loop *self, PyObject *args) {
    Py_buffer dst, src, peer, hop;
    Session *s;
    PyObject *inner = Py_None;
    long alone_above;
    double now;
    if (!PyArg_ParseTuple(args, "y*y*y*y*O!ld|O", &dst, &src, &peer, &hop, &SessionType, &s,
                          &alone_above, &now, &inner))
        return NULL;
    PyObject *res = NULL;
    if (inner != Py_None && !PyObject_TypeCheck(inner, &SessionType)) {
        PyErr_SetString(PyExc_TypeError, "inner must be a Session or None");
    } else if (mac_arg(&dst, "dst") && mac_arg(&src, "src") && mac_arg(&peer, "peer") &&
               mac_arg(&hop, "hop")) {
        sync_epoch(self);
        Lane *ln = &self->lanes[mac_hash(dst.buf, NLANES)];
        memcpy(ln->mac, dst.buf, 6);
        memcpy(ln->src, src.buf, 6);
        memcpy(ln->peer, peer.buf, 6);
        memcpy(ln->hop, hop.buf, 6);
        Py_INCREF(s);
        Py_XSETREF(ln->s, s);
        if (inner == Py_None) {
            Py_CLEAR(ln->inner);
        } else {
            Py_INCREF(inner);
            Py_XSETREF(ln->inner, (Session *)inner);
        }
        ln->gen = self->gen;
        ln->learned_at = now;
        ln->alone_above = alone_above;
        res = Py_None;
        Py_INCREF(res);
    }
    PyBuffer_Release(&dst);
    PyBuffer_Release(&src);
    PyBuffer_Release(&peer);
    PyBuffer_Release(&hop);
    return res;
}

static PyObject *Loop_bind(Loop *self, PyObject *args) {
    unsigned int index;
    Session *s;
    if (!PyArg_ParseTuple(args, "IO!", &index, &SessionType, &s)) return NULL;
    sync_epoch(self);
    Bound *bd = &self->bound[index & (NBOUND - 1)];
    Py_INCREF(s);
    Py_XSETREF(bd->s, s);
    bd->index = index;
    bd->gen = self->gen;
    Py_RETURN_NONE;
}

static PyObject *Loop_set_relay(Loop *self, PyObject *args) {
    Py_buffer dst, hop;
    Session *s;
    if (!PyArg_ParseTuple(args, "y*y*O!", &dst, &hop, &SessionType, &s)) return NULL;
    PyObject *res = NULL;
    if (mac_arg(&dst, "dst") && mac_arg(&hop, "hop")) {
        sync_epoch(self);
        Relay *rl = &self->relays[mac_hash(dst.buf, NRELAYS)];
        memcpy(rl->dst, dst.buf, 6);
        memcpy(rl->hop, hop.buf, 6);
        Py_INCREF(s);
        Py_XSETREF(rl->s, s);
        rl->gen = self->gen;
        res = Py_None;
        Py_INCREF(res);
    }
    PyBuffer_Release(&dst);
    PyBuffer_Release(&hop);
    return res;
}

static PyObject *Loop_bind_sealed(Loop *self, PyObject *args) {
    unsigned int index;
    Session *s;
    Py_buffer peer;
    if (!PyArg_ParseTuple(args, "IO!y*", &index, &SessionType, &s, &peer)) return NULL;
    if (!mac_arg(&peer, "peer")) {
        PyBuffer_Release(&peer);
        return NULL;
    }
    sync_epoch(self);
    Sealed *sd = &self->sealed[index & (NSEALED - 1)];
    Py_INCREF(s);
    Py_XSETREF(sd->s, s);
    sd->index = index;
    sd->gen = self->gen;
    memcpy(sd->peer, peer.buf, 6);
    PyBuffer_Release(&peer);
    Py_RETURN_NONE;
}

static PyObject *Loop_seen(Loop *self, PyObject *args) {
    Py_buffer mac, origin;
    double now;
    if (!PyArg_ParseTuple(args, "y*y*d", &mac, &origin, &now)) return NULL;
    PyObject *res = NULL;
    if (mac_arg(&mac, "mac") && mac_arg(&origin, "origin")) {
        sync_epoch(self);
        Seen *sn = &self->seen[mac_hash(mac.buf, NSEEN)];
        memcpy(sn->mac, mac.buf, 6);
        memcpy(sn->origin, origin.buf, 6);
        sn->gen = self->gen;
        sn->learned_at = now;
        res = Py_None;
        Py_INCREF(res);
    }
    PyBuffer_Release(&mac);
    PyBuffer_Release(&origin);
    return res;
}

static PyObject *Loop_invalidate(Loop *self, PyObject *unused) {
    __atomic_add_fetch(&self->epoch, 1, __ATOMIC_RELEASE);
    Py_RETURN_NONE;
}

static PyObject *Loop_release(Loop *self, PyObject *unused) {
    Loop_clear_refs(self);
    self->gen++;
    Py_RETURN_NONE;
}

static PyObject *Loop_counts(Loop *self, PyObject *unused) {
    PyObject *t = PyTuple_New(NCOUNTS);
    if (!t) return NULL;
    for (int i = 0; i < NCOUNTS; i++) {
        PyObject *v = PyLong_FromUnsignedLongLong(self->counts[i]);
        if (!v) {
            Py_DECREF(t);
            return NULL;
        }
        PyTuple_SET_ITEM(t, i, v);
    }
    return t;
}

static PyObject *Loop_send_errors(Loop *self, PyObject *unused) {
    PyObject *d = PyDict_New();
    if (!d) return NULL;
    for (int i = 0; i < NERRNO; i++) {
        if (!self->send_errors[i]) continue;
        PyObject *k = PyLong_FromLong(i), *v = PyLong_FromUnsignedLongLong(self->send_errors[i]);
        int bad = !k || !v || PyDict_SetItem(d, k, v) < 0;
        Py_XDECREF(k);
        Py_XDECREF(v);
        if (bad) {
            Py_DECREF(d);
            return NULL;
        }
    }
    return d;
}

/* ---------------------------------------------------------------- Coalescer */

/* The coalescer for Python's own receive path (the data plane in Python with
   the extension built): frames in, runs joined, written to a TAP fd. */
typedef struct {
    PyObject_HEAD
    Coalescer co;
    int fd, have;
    unsigned long long blocked, failed;
} CoalescerObject;

static void fd_emit(void *ctx, const unsigned char *p, size_t n) {
    CoalescerObject *o = ctx;
    if (o->fd >= 0 && write(o->fd, p, n) < 0) {
        if (errno == EAGAIN) o->blocked++;
        else o->failed++;
    }
}

static int Co_init(CoalescerObject *self, PyObject *args, PyObject *kw) {
    static char *names[] = {"tap_fd", NULL};
    int fd;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "i", names, &fd)) return -1;
    if (self->have) {
        PyErr_SetString(PyExc_RuntimeError, "Coalescer initialised twice");
        return -1;
    }
    self->fd = fd;
    self->have = coalescer_init(&self->co, fd_emit, self);
    if (!self->have) {
        coalescer_free(&self->co);
        PyErr_NoMemory();
        return -1;
    }
    return 0;
}

static void Co_dealloc(CoalescerObject *self) {
    coalescer_free(&self->co);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyObject *Co_add(CoalescerObject *self, PyObject *arg) {
    Py_buffer b;
    if (!self->have) {
        PyErr_SetString(PyExc_RuntimeError, "Coalescer not initialised");
        return NULL;
    }
    if (PyObject_GetBuffer(arg, &b, PyBUF_SIMPLE) < 0) return NULL;
    if ((size_t)b.len <= ETH_AT + MAX_SUPER) coalesce_frame(&self->co, b.buf, (size_t)b.len);
    else fd_emit(self, b.buf, (size_t)b.len);
    PyBuffer_Release(&b);
    Py_RETURN_NONE;
}

static PyObject *Co_flush(CoalescerObject *self, PyObject *unused) {
    if (self->have) coalescer_flush(&self->co);
    Py_RETURN_NONE;
}

static PyObject *Co_counts(CoalescerObject *self, PyObject *unused) {
    return Py_BuildValue("(KKKK)", self->co.superframes, self->co.joined, self->blocked,
                         self->failed);
}

static PyMethodDef Co_methods[] = {
    {"add", (PyCFunction)Co_add, METH_O,
     "add(frame): a frame (virtio header on) for the TAP: joined to its connection's "
     "run, or written."},
    {"flush", (PyCFunction)Co_flush, METH_NOARGS, "Write every run held."},
    {"counts", (PyCFunction)Co_counts, METH_NOARGS,
     "(superframes written, segments joined into them, writes that would block, "
     "writes that failed)"},
    {NULL}};

static PyTypeObject CoalescerType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "meshrouter.dataplane._dataplane.Coalescer",
    .tp_basicsize = sizeof(CoalescerObject),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "In-order TCP segments of a connection joined into superframes for a TAP.",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)Co_init,
    .tp_dealloc = (destructor)Co_dealloc,
    .tp_methods = Co_methods,
};

/* For tests: the segmenter and the coalescer alone. */

static PyObject *mod_segment(PyObject *mod, PyObject *args, PyObject *kw) {
    static char *names[] = {"frame", "full", NULL};
    Py_buffer b;
    int full = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "y*|p", names, &b, &full)) return NULL;
    Tcp h;
    size_t mss, n = (size_t)b.len;
    const unsigned char *vf = b.buf;
    PyObject *res;
    if (!tcp_superframe(vf, n, &h, &mss)) {
        res = Py_None;
        Py_INCREF(res);
    } else {
        size_t payload = n - ETH_AT - (size_t)h.end, count = (payload + mss - 1) / mss;
        unsigned char *tmp = PyMem_RawMalloc(ETH_AT + (size_t)h.end + mss);
        res = tmp ? PyList_New((Py_ssize_t)count) : PyErr_NoMemory();
        for (size_t i = 0; res && i < count; i++) {
            size_t len = tcp_segment_one(tmp, vf, n, &h, mss, i, count, full);
            PyObject *f = PyBytes_FromStringAndSize((const char *)tmp, (Py_ssize_t)len);
            if (!f) Py_CLEAR(res);
            else PyList_SET_ITEM(res, (Py_ssize_t)i, f);
        }
        PyMem_RawFree(tmp);
    }
    PyBuffer_Release(&b);
    return res;
}

static void list_emit(void *ctx, const unsigned char *p, size_t n) {
    PyObject *f = PyBytes_FromStringAndSize((const char *)p, (Py_ssize_t)n);
    if (f) {
        PyList_Append((PyObject *)ctx, f);
        Py_DECREF(f);
    }
}

static PyObject *mod_coalesce(PyObject *mod, PyObject *frames) {
    PyObject *seq = PySequence_Fast(frames, "coalesce() takes a sequence of bytes");
    if (!seq) return NULL;
    PyObject *out = PyList_New(0);
    Coalescer *C = PyMem_RawMalloc(sizeof *C);
    int ok = out && C && coalescer_init(C, list_emit, out);
    for (Py_ssize_t i = 0; ok && i < PySequence_Fast_GET_SIZE(seq); i++) {
        Py_buffer b;
        if (PyObject_GetBuffer(PySequence_Fast_GET_ITEM(seq, i), &b, PyBUF_SIMPLE) < 0) {
            ok = 0;
            break;
        }
        if (b.len >= 0 && (size_t)b.len <= ETH_AT + MAX_SUPER) coalesce_frame(C, b.buf, (size_t)b.len);
        else list_emit(out, b.buf, (size_t)b.len);
        PyBuffer_Release(&b);
    }
    if (ok) coalescer_flush(C);
    if (C) coalescer_free(C);
    PyMem_RawFree(C);
    Py_DECREF(seq);
    if (!ok || PyErr_Occurred()) {
        Py_XDECREF(out);
        if (!PyErr_Occurred()) PyErr_NoMemory();
        return NULL;
    }
    return out;
}

static PyMethodDef module_methods[] = {
    {"segment", (PyCFunction)(void (*)(void))mod_segment, METH_VARARGS | METH_KEYWORDS,
     "segment(frame, full=False) -> list of frames, or None: a TCP superframe cut as "
     "the send path cuts it (tso.segment_untrusted's C twin)."},
    {"coalesce", (PyCFunction)mod_coalesce, METH_O,
     "coalesce(frames) -> frames: a batch joined as the receive path joins it."},
    {NULL}};

static PyObject *Loop_get_ev_hop(Loop *self, void *unused) {
    return PyBytes_FromStringAndSize((const char *)self->ev_hop, 6);
}

static PyMethodDef Loop_methods[] = {
    {"run", (PyCFunction)Loop_run, METH_VARARGS,
     "run(now, timeout) -> event: forward until something needs Python, or timeout."},
    {"set_lane", (PyCFunction)Loop_set_lane, METH_VARARGS,
     "set_lane(dst_mac, src_mac, dst_peer, hop, session, alone_above, now, inner=None)"},
    {"bind", (PyCFunction)Loop_bind, METH_VARARGS, "bind(receiver_index, session)"},
    {"set_relay", (PyCFunction)Loop_set_relay, METH_VARARGS,
     "set_relay(dst_peer, hop, session): relay messages to dst_peer on to hop"},
    {"bind_sealed", (PyCFunction)Loop_bind_sealed, METH_VARARGS,
     "bind_sealed(receiver_index, session, peer): its datagrams come inside relayed messages"},
    {"seen", (PyCFunction)Loop_seen, METH_VARARGS, "seen(src_mac, origin, now)"},
    {"invalidate", (PyCFunction)Loop_invalidate, METH_NOARGS,
     "Forget every lane, binding and seen MAC (any thread)."},
    {"release", (PyCFunction)Loop_release, METH_NOARGS, "Drop the sessions held."},
    {"counts", (PyCFunction)Loop_counts, METH_NOARGS, "The loop's counters, in COUNTS order."},
    {"send_errors", (PyCFunction)Loop_send_errors, METH_NOARGS, "Failed sends by errno."},
    {NULL}};

static PyMemberDef Loop_members[] = {
    {"ev_n", T_INT, offsetof(Loop, ev_n), READONLY, NULL},
    {"ev_first", T_INT, offsetof(Loop, ev_first), READONLY, NULL},
    {"ev_off", T_INT, offsetof(Loop, ev_off), READONLY, NULL},
    {"ev_seg", T_INT, offsetof(Loop, ev_seg), READONLY, NULL},
    {"ev_next", T_INT, offsetof(Loop, ev_next), READONLY, NULL},
    {"ev_len", T_INT, offsetof(Loop, ev_len), READONLY, NULL},
    {"ev_dlen", T_INT, offsetof(Loop, ev_dlen), READONLY, NULL},
    {"ev_type", T_INT, offsetof(Loop, ev_type), READONLY, NULL},
    {"ev_index", T_UINT, offsetof(Loop, ev_index), READONLY, NULL},
    {"gso", T_INT, offsetof(Loop, gso), READONLY, NULL},
    {NULL}};

static PyGetSetDef Loop_getset[] = {
    {"ev_hop", (getter)Loop_get_ev_hop, NULL, "next hop of an EV_TOO_SMALL send", NULL},
    {NULL}};

static PyTypeObject LoopType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "meshrouter.dataplane._dataplane.Loop",
    .tp_basicsize = sizeof(Loop),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "The per-message forwarding loop (see the module's docstring).",
    .tp_new = Loop_new,
    .tp_init = (initproc)Loop_init,
    .tp_dealloc = (destructor)Loop_dealloc,
    .tp_methods = Loop_methods,
    .tp_members = Loop_members,
    .tp_getset = Loop_getset,
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "meshrouter.dataplane._dataplane",
    .m_doc = "The data plane's per-message loop in C (see _dataplane.c).",
    .m_size = -1,
    .m_methods = module_methods,
};

PyMODINIT_FUNC PyInit__dataplane(void) {
    if (PyType_Ready(&SessionType) < 0 || PyType_Ready(&LoopType) < 0 ||
        PyType_Ready(&CoalescerType) < 0)
        return NULL;
    PyObject *m = PyModule_Create(&module);
    if (!m) return NULL;
    Py_INCREF(&SessionType);
    Py_INCREF(&LoopType);
    Py_INCREF(&CoalescerType);
    if (PyModule_AddObject(m, "Session", (PyObject *)&SessionType) < 0 ||
        PyModule_AddObject(m, "Loop", (PyObject *)&LoopType) < 0 ||
        PyModule_AddObject(m, "Coalescer", (PyObject *)&CoalescerType) < 0)
        return NULL;
    const char *evs[] = {"EV_TIMEOUT", "EV_WAKE", "EV_TAP", "EV_TAP_DONE",
                         "EV_UDP", "EV_PLAIN", "EV_TOO_SMALL"};
    for (int i = 0; i < 7; i++)
        if (PyModule_AddIntConstant(m, evs[i], i) < 0) return NULL;
    PyObject *names = Py_BuildValue(
        "(ssssssssssssssssssssss)", "c_frames_sent", "c_messages_delivered", "c_frames_to_python",
        "c_datagrams_to_python", "c_gso_sends", "c_superframes_cut", "c_segments_sealed",
        "c_superframes_joined", "c_segments_joined", "c_sealed_end_to_end",
        "c_opened_end_to_end", "c_messages_relayed", "c_relayed_unread", "tap_runt", "tap_read_error", "udp_recv_error",
        "empty_datagram", "tap_write_would_block", "tap_write_error", "gso_fallback",
        "message_too_large", "packed_lost");
    if (!names || PyModule_AddObject(m, "COUNTS", names) < 0) return NULL;
    return m;
}
