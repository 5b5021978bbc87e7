/*
 * milter_load.c - load generator for milter servers (the MTA side), lockstep.
 *
 * Each connection negotiates once (version 6, every action and step offered,
 * as Postfix does), then sends messages one after the other, each command
 * answered before the next is sent, the way Postfix's smtpd drives a milter:
 *
 *   D(M) i, {mail_addr}  M <uC.N@origin.test>   -> c       (none if SMFIP_NR_MAIL)
 *   D(R) {rcpt_addr}     R <rcptK@dest.test>    -> c       (x recipients)
 *   D(E) i               E                      -> e <SRS0=...=origin.test=uC.N@DOMAIN>, a|c
 *
 * A macro packet and its command go out in one write. A filter that asks for no
 * reply to MAIL in the negotiation (SMFIP_NR_MAIL) gets none awaited, as Postfix
 * does: the first recipient follows at once. Every reply is checked:
 * MAIL and RCPT must be answered "continue", the end of the message must bring
 * exactly one CHGFROM whose address is an SRS0 address of DOMAIN wrapping this
 * message's sender, then accept or continue; anything else (a tempfail, a
 * reject, a recipient change, a wrong address) counts as a bad message.
 * With --quickack the client sets TCP_QUICKACK before every read, so the
 * server never waits for a delayed ACK; without it, it is a plain client
 * (Postfix sets no TCP_QUICKACK).
 *
 * One thread, epoll, one connection per -c. Prints "# measure start" and
 * "# measure end" on stderr at the edges of the measured window (--markers)
 * and the results as one JSON object (--json).
 *
 * Build: gcc -O2 -Wall -Wextra -o milter_load milter_load.c
 * Loopback targets only: this tool has no rate limit.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define RBUF_SIZE 70000 /* one reply packet of up to 64 KiB plus the next */
#define MAX_RCPTS 64
#define MAX_CONNS 1024

enum { PH_NEGOTIATE, PH_MAIL, PH_RCPT, PH_EOM };

typedef struct {
    int fd, phase, rcpt, saw_chgfrom, bad;
    int nr_mail; /* the filter asked for no reply to MAIL (SMFIP_NR_MAIL): Postfix honours it */
    uint64_t seq, started, last_send;
    unsigned char rbuf[RBUF_SIZE];
    size_t rlen;
} conn_t;

static struct {
    const char *host, *port, *domain, *label;
    int conns, rcpts, quickack, json, markers, quiet;
    double duration, warmup, timeout;
} cfg = {.host = "127.0.0.1", .port = "10004", .domain = "forwarder.test", .label = "",
         .conns = 1, .rcpts = 1, .duration = 3.0, .timeout = 5.0};

static struct {
    uint64_t messages, bad, mail_c, rcpt_c, chgfrom, accept, cont, tempfail, reject,
        other_reply, errors, timeouts;
    char first_bad[200];
} st;

static uint64_t *lat; /* per-message latency, ns, measured window only */
static size_t nlat, caplat;
static uint64_t t_start, t_end;

static uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static void die(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fputs("milter_load: ", stderr);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
    exit(2);
}

static int in_window(uint64_t t) { return t >= t_start && t < t_end; }

static void note_bad(conn_t *c, const char *fmt, ...)
{
    c->bad = 1;
    if (st.first_bad[0])
        return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(st.first_bad, sizeof st.first_bad, fmt, ap);
    va_end(ap);
    for (char *p = st.first_bad; *p; p++)
        if ((unsigned char)*p < 0x20 || (unsigned char)*p >= 0x7f || *p == '"' || *p == '\\')
            *p = '?';
}

/* -- packets ------------------------------------------------------------------------------- */

static size_t put_packet(unsigned char *out, char cmd, const char *data, size_t n)
{
    uint32_t len = (uint32_t)n + 1;
    out[0] = (unsigned char)(len >> 24);
    out[1] = (unsigned char)(len >> 16);
    out[2] = (unsigned char)(len >> 8);
    out[3] = (unsigned char)len;
    out[4] = (unsigned char)cmd;
    memcpy(out + 5, data, n);
    return n + 5;
}

/* a packet of NUL-terminated strings */
static size_t put_strings(unsigned char *out, char cmd, int count, ...)
{
    char data[1024];
    size_t n = 0;
    va_list ap;
    va_start(ap, count);
    for (int i = 0; i < count; i++) {
        const char *s = va_arg(ap, const char *);
        size_t l = strlen(s);
        memcpy(data + n, s, l + 1);
        n += l + 1;
    }
    va_end(ap);
    return put_packet(out, cmd, data, n);
}

static void quickack(conn_t *c)
{
    int one = 1;
    if (cfg.quickack)
        setsockopt(c->fd, IPPROTO_TCP, TCP_QUICKACK, &one, sizeof one);
}

static int send_all(conn_t *c, const unsigned char *buf, size_t n)
{
    while (n) {
        ssize_t w = send(c->fd, buf, n, MSG_NOSIGNAL);
        if (w < 0) {
            if (errno == EINTR)
                continue;
            if (errno == EAGAIN) { /* tiny requests into an empty socket: should not happen */
                struct timespec ts = {0, 100000};
                nanosleep(&ts, NULL);
                continue;
            }
            return -1;
        }
        buf += w;
        n -= (size_t)w;
    }
    c->last_send = now_ns();
    return 0;
}

/* a macro packet: the stage byte, then name and value strings */
static size_t put_macros(unsigned char *out, char stage, int pairs, ...)
{
    char data[512];
    size_t d = 0;
    data[d++] = stage;
    va_list ap;
    va_start(ap, pairs);
    for (int i = 0; i < 2 * pairs; i++) {
        const char *s = va_arg(ap, const char *);
        size_t l = strlen(s);
        memcpy(data + d, s, l + 1);
        d += l + 1;
    }
    va_end(ap);
    return put_packet(out, 'D', data, d);
}

static int send_rcpt(conn_t *c);
static int send_eom(conn_t *c, int index);

static int send_mail(conn_t *c, int index)
{
    unsigned char out[1024];
    char sender[128], qid[32];
    snprintf(sender, sizeof sender, "<u%d.%" PRIu64 "@origin.test>", index, c->seq);
    snprintf(qid, sizeof qid, "Q%dN%" PRIu64, index, c->seq);
    size_t n = put_macros(out, 'M', 2, "i", qid, "{mail_addr}", sender);
    n += put_strings(out + n, 'M', 1, sender);
    c->phase = PH_MAIL;
    c->rcpt = 0;
    c->saw_chgfrom = 0;
    c->bad = 0;
    c->started = now_ns();
    if (send_all(c, out, n))
        return -1;
    if (!c->nr_mail)
        return 0;
    /* no reply to wait for: on to the first recipient, in a write of its own (as Postfix) */
    return cfg.rcpts > 0 ? send_rcpt(c) : send_eom(c, index);
}

static int send_rcpt(conn_t *c)
{
    unsigned char out[1024];
    char rcpt[64];
    snprintf(rcpt, sizeof rcpt, "<rcpt%d@dest.test>", c->rcpt);
    size_t n = put_macros(out, 'R', 1, "{rcpt_addr}", rcpt);
    n += put_strings(out + n, 'R', 1, rcpt);
    c->phase = PH_RCPT;
    return send_all(c, out, n);
}

static int send_eom(conn_t *c, int index)
{
    unsigned char out[256];
    char qid[32];
    snprintf(qid, sizeof qid, "Q%dN%" PRIu64, index, c->seq);
    size_t n = put_macros(out, 'E', 1, "i", qid);
    n += put_packet(out + n, 'E', "", 0);
    c->phase = PH_EOM;
    return send_all(c, out, n);
}

/* is ADDR (NUL-terminated, n bytes before the NUL) SRS0=HASH=TT=origin.test=uI.SEQ@DOMAIN? */
static int good_chgfrom(const char *addr, size_t n, int index, uint64_t seq)
{
    char tail[160];
    int t = snprintf(tail, sizeof tail, "=origin.test=u%d.%" PRIu64 "@%s", index, seq, cfg.domain);
    if (n < 5 + 4 + 1 + 2 + (size_t)t || strncmp(addr, "SRS0", 4) || !strchr("=+-", addr[4]))
        return 0;
    if (memcmp(addr + n - (size_t)t, tail, (size_t)t))
        return 0;
    /* HASH=TT between: SRS0=<hash>=<TT><tail> */
    const char *hash = addr + 5, *eq = memchr(hash, '=', n - 5);
    return eq && eq - hash >= 4 && addr + n - (size_t)t - (eq + 1) == 2;
}

/* one reply packet: returns 1 when the connection should go on, 0 to close it */
static int on_reply(conn_t *c, int index, char cmd, const unsigned char *data, size_t n)
{
    uint64_t now = now_ns();
    switch (c->phase) {
    case PH_NEGOTIATE:
        if (cmd != 'O' || n < 12) {
            note_bad(c, "negotiation answered '%c' (%zu bytes)", cmd, n);
            st.errors++;
            return 0;
        }
        c->nr_mail = (data[10] & 0x40) != 0; /* protocol flags, big-endian: 0x4000 */
        return send_mail(c, index) == 0;
    case PH_MAIL:
    case PH_RCPT:
        if (cmd != 'c') {
            note_bad(c, "%s answered '%c'", c->phase == PH_MAIL ? "MAIL" : "RCPT", cmd);
            st.other_reply += in_window(now);
            return 0;
        }
        if (in_window(now))
            (*(c->phase == PH_MAIL ? &st.mail_c : &st.rcpt_c))++;
        if (c->phase == PH_RCPT)
            c->rcpt++;
        return (c->rcpt < cfg.rcpts ? send_rcpt(c) : send_eom(c, index)) == 0;
    case PH_EOM:
        if (cmd == 'e') {
            size_t len = strnlen((const char *)data, n);
            if (len == n || !good_chgfrom((const char *)data, len, index, c->seq))
                note_bad(c, "CHGFROM %.*s", (int)(len < 120 ? len : 120), data);
            c->saw_chgfrom++;
            st.chgfrom += in_window(now);
            return 1;
        }
        if (cmd == 'p') /* progress */
            return 1;
        if (cmd == 'a' || cmd == 'c') {
            if (c->saw_chgfrom != 1)
                note_bad(c, "end of message: %d CHGFROM", c->saw_chgfrom);
            *(cmd == 'a' ? &st.accept : &st.cont) += (uint64_t)in_window(now);
        } else if (cmd == 't' || cmd == 'r' || cmd == 'd' || cmd == 'y' || cmd == 'q') {
            note_bad(c, "end of message answered '%c'", cmd);
            *(cmd == 't'   ? &st.tempfail
              : cmd == 'r' ? &st.reject
                           : &st.other_reply) += (uint64_t)in_window(now);
        } else {
            note_bad(c, "end of message: unexpected '%c'", cmd); /* '+', '-', ... */
            st.other_reply += in_window(now);
            return 1;
        }
        if (in_window(c->started) && in_window(now)) {
            st.messages++;
            st.bad += c->bad;
            if (nlat == caplat) {
                caplat = caplat ? caplat * 2 : 65536;
                lat = realloc(lat, caplat * sizeof *lat);
                if (!lat)
                    die("out of memory");
            }
            lat[nlat++] = now - c->started;
        }
        c->seq++;
        if (now >= t_end)
            return 0;
        return send_mail(c, index) == 0;
    }
    return 0;
}

/* read what is there and handle every complete packet */
static int on_readable(conn_t *c, int index)
{
    for (;;) {
        quickack(c);
        ssize_t r = recv(c->fd, c->rbuf + c->rlen, sizeof c->rbuf - c->rlen, 0);
        if (r < 0) {
            if (errno == EINTR)
                continue;
            if (errno == EAGAIN)
                break;
            st.errors++;
            note_bad(c, "recv: %s", strerror(errno));
            return 0;
        }
        if (r == 0) {
            st.errors++;
            note_bad(c, "server closed the connection");
            return 0;
        }
        c->rlen += (size_t)r;
        size_t off = 0;
        while (c->rlen - off >= 5) {
            const unsigned char *p = c->rbuf + off;
            uint32_t len = (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
            if (len < 1 || len > 65536) {
                st.errors++;
                note_bad(c, "reply packet length %u", len);
                return 0;
            }
            if (c->rlen - off < 4 + (size_t)len)
                break;
            off += 4 + len;
            if (!on_reply(c, index, (char)p[4], p + 5, len - 1))
                return 0;
        }
        memmove(c->rbuf, c->rbuf + off, c->rlen - off);
        c->rlen -= off;
        if ((size_t)r < sizeof c->rbuf - c->rlen)
            break;
    }
    return 1;
}

static int cmp_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

static double pct_us(double q)
{
    if (!nlat)
        return 0.0;
    size_t i = (size_t)(q * (double)(nlat - 1) + 0.5);
    return (double)lat[i] / 1000.0;
}

static void usage(FILE *f)
{
    fputs("usage: milter_load [options] HOST:PORT\n"
          "  -c N            connections (default 1)\n"
          "  -r N            recipients per message (default 1, at most 64)\n"
          "  -d SECONDS      measured duration (default 3)\n"
          "  -w SECONDS      warm-up before the measured window (default 0)\n"
          "  --quickack      set TCP_QUICKACK before every read\n"
          "  --domain D      the SRS domain CHGFROM addresses must end in (forwarder.test)\n"
          "  --timeout S     a reply later than this is an error (default 5)\n"
          "  --json          results as one JSON object\n"
          "  --markers       '# measure start/end' on stderr at the window's edges\n"
          "  --label TEXT    copied into the JSON\n"
          "  -q              quiet\n",
          f);
}

int main(int argc, char **argv)
{
    enum { O_QUICKACK = 256, O_DOMAIN, O_TIMEOUT, O_JSON, O_MARKERS, O_LABEL };
    static const struct option longopts[] = {
        {"quickack", 0, 0, O_QUICKACK}, {"domain", 1, 0, O_DOMAIN},
        {"timeout", 1, 0, O_TIMEOUT},   {"json", 0, 0, O_JSON},
        {"markers", 0, 0, O_MARKERS},   {"label", 1, 0, O_LABEL},
        {"help", 0, 0, 'h'},            {0, 0, 0, 0}};
    int opt;
    while ((opt = getopt_long(argc, argv, "c:r:d:w:qh", longopts, NULL)) != -1) {
        switch (opt) {
        case 'c': cfg.conns = atoi(optarg); break;
        case 'r': cfg.rcpts = atoi(optarg); break;
        case 'd': cfg.duration = atof(optarg); break;
        case 'w': cfg.warmup = atof(optarg); break;
        case 'q': cfg.quiet = 1; break;
        case O_QUICKACK: cfg.quickack = 1; break;
        case O_DOMAIN: cfg.domain = optarg; break;
        case O_TIMEOUT: cfg.timeout = atof(optarg); break;
        case O_JSON: cfg.json = 1; break;
        case O_MARKERS: cfg.markers = 1; break;
        case O_LABEL: cfg.label = optarg; break;
        case 'h': usage(stdout); return 0;
        default: usage(stderr); return 2;
        }
    }
    if (optind != argc - 1)
        die("one HOST:PORT expected");
    if (cfg.conns < 1 || cfg.conns > MAX_CONNS || cfg.rcpts < 1 || cfg.rcpts > MAX_RCPTS ||
        cfg.duration <= 0 || cfg.warmup < 0 || cfg.timeout <= 0)
        die("bad -c, -r, -d, -w or --timeout");
    char *target = strdup(argv[optind]), *colon = strrchr(target, ':');
    if (!colon)
        die("HOST:PORT expected");
    *colon = 0;
    cfg.host = target;
    cfg.port = colon + 1;

    struct addrinfo hints = {.ai_socktype = SOCK_STREAM}, *ai;
    int gai = getaddrinfo(cfg.host, cfg.port, &hints, &ai);
    if (gai)
        die("%s: %s", cfg.host, gai_strerror(gai));

    int ep = epoll_create1(0);
    conn_t *conns = calloc((size_t)cfg.conns, sizeof *conns);
    if (ep < 0 || !conns)
        die("epoll_create1 / calloc failed");
    struct rusage ru0, ru1;
    getrusage(RUSAGE_SELF, &ru0);
    uint64_t t0 = now_ns();
    t_start = t0 + (uint64_t)(cfg.warmup * 1e9);
    t_end = t_start + (uint64_t)(cfg.duration * 1e9);
    int live = 0;
    for (int i = 0; i < cfg.conns; i++) {
        conn_t *c = &conns[i];
        c->fd = socket(ai->ai_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
        if (c->fd < 0 || connect(c->fd, ai->ai_addr, ai->ai_addrlen) < 0)
            die("connect %s:%s: %s", cfg.host, cfg.port, strerror(errno));
        int one = 1;
        setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        quickack(c);
        unsigned char out[32];
        unsigned char opts[12] = {0, 0, 0, 6, 0, 0, 0x01, 0xff, 0, 0x1f, 0xff, 0xff};
        size_t n = put_packet(out, 'O', (const char *)opts, sizeof opts);
        if (send_all(c, out, n) < 0)
            die("send: %s", strerror(errno));
        struct epoll_event ev = {.events = EPOLLIN, .data.u32 = (uint32_t)i};
        if (epoll_ctl(ep, EPOLL_CTL_ADD, c->fd, &ev) < 0)
            die("epoll_ctl: %s", strerror(errno));
        live++;
    }
    freeaddrinfo(ai);

    int started = 0, ended = 0;
    struct epoll_event evs[64];
    uint64_t timeout_ns = (uint64_t)(cfg.timeout * 1e9);
    while (live > 0) {
        uint64_t now = now_ns();
        if (!started && now >= t_start) {
            started = 1;
            if (cfg.markers) {
                fputs("# measure start\n", stderr);
                fflush(stderr);
            }
        }
        if (!ended && now >= t_end) {
            ended = 1;
            if (cfg.markers) {
                fputs("# measure end\n", stderr);
                fflush(stderr);
            }
        }
        if (now >= t_end + timeout_ns)
            break; /* messages still in flight at the end: the server is stuck */
        int n = epoll_wait(ep, evs, 64, 5);
        if (n < 0 && errno != EINTR)
            die("epoll_wait: %s", strerror(errno));
        for (int k = 0; k < n; k++) {
            int i = (int)evs[k].data.u32;
            conn_t *c = &conns[i];
            if (c->fd >= 0 && !on_readable(c, i)) {
                close(c->fd);
                c->fd = -1;
                live--;
            }
        }
        now = now_ns();
        for (int i = 0; i < cfg.conns; i++) {
            conn_t *c = &conns[i];
            if (c->fd >= 0 && now - c->last_send > timeout_ns) {
                st.timeouts++;
                note_bad(c, "no reply within %g s", cfg.timeout);
                close(c->fd);
                c->fd = -1;
                live--;
            }
        }
    }
    if (!ended && cfg.markers) {
        fputs("# measure end\n", stderr);
        fflush(stderr);
    }
    for (int i = 0; i < cfg.conns; i++) {
        if (conns[i].fd >= 0) {
            unsigned char out[8];
            size_t n = put_packet(out, 'Q', "", 0);
            send(conns[i].fd, out, n, MSG_NOSIGNAL);
            close(conns[i].fd);
        }
    }
    uint64_t t_done = now_ns();
    getrusage(RUSAGE_SELF, &ru1);
    qsort(lat, nlat, sizeof *lat, cmp_u64);
    double elapsed = (double)(t_end - t_start) / 1e9;
    double cpu = (double)(ru1.ru_utime.tv_sec - ru0.ru_utime.tv_sec) +
                 (double)(ru1.ru_utime.tv_usec - ru0.ru_utime.tv_usec) / 1e6 +
                 (double)(ru1.ru_stime.tv_sec - ru0.ru_stime.tv_sec) +
                 (double)(ru1.ru_stime.tv_usec - ru0.ru_stime.tv_usec) / 1e6;
    double wall = (double)(t_done - t0) / 1e9;
    uint64_t errors = st.errors + st.timeouts;
    if (cfg.json) {
        printf("{\"tool\":\"milter_load\",\"label\":\"%s\",\"connections\":%d,\"recipients\":%d,"
               "\"quickack\":%s,\"elapsed_s\":%.4f,\"messages\":%" PRIu64 ",\"rate\":%.1f,"
               "\"bad_messages\":%" PRIu64 ",\"errors\":%" PRIu64 ",\"timeouts\":%" PRIu64
               ",\"replies\":{\"mail_continue\":%" PRIu64 ",\"rcpt_continue\":%" PRIu64
               ",\"chgfrom\":%" PRIu64 ",\"accept\":%" PRIu64 ",\"continue\":%" PRIu64
               ",\"tempfail\":%" PRIu64 ",\"reject\":%" PRIu64 ",\"other\":%" PRIu64 "},"
               "\"latency_us\":{\"p50\":%.1f,\"p90\":%.1f,\"p99\":%.1f,\"max\":%.1f},"
               "\"first_bad\":\"%s\",\"client_cpu\":{\"pct\":%.1f}}\n",
               cfg.label, cfg.conns, cfg.rcpts, cfg.quickack ? "true" : "false", elapsed,
               st.messages, (double)st.messages / elapsed, st.bad, errors, st.timeouts,
               st.mail_c, st.rcpt_c, st.chgfrom, st.accept, st.cont, st.tempfail, st.reject,
               st.other_reply, pct_us(0.5), pct_us(0.9), pct_us(0.99),
               nlat ? (double)lat[nlat - 1] / 1000.0 : 0.0, st.first_bad,
               wall > 0 ? 100.0 * cpu / wall : 0.0);
    } else if (!cfg.quiet || errors || st.bad) {
        printf("%s:%s  %d connection(s), %d recipient(s), quickack %s\n", cfg.host, cfg.port,
               cfg.conns, cfg.rcpts, cfg.quickack ? "on" : "off");
        printf("messages      %" PRIu64 " in %.2f s: %.0f/s, %" PRIu64 " bad, %" PRIu64
               " errors\n",
               st.messages, elapsed, (double)st.messages / elapsed, st.bad, errors);
        printf("latency (us)  p50 %.1f  p90 %.1f  p99 %.1f  max %.1f\n", pct_us(0.5),
               pct_us(0.9), pct_us(0.99), nlat ? (double)lat[nlat - 1] / 1000.0 : 0.0);
        if (st.first_bad[0])
            printf("first bad     %s\n", st.first_bad);
    }
    return (errors || st.bad || !st.messages) ? 1 : 0;
}
