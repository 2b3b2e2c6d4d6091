/* fpbload: a closed-loop HTTP/1.1 load client for proxy/bench that accounts for
 * every request, optionally over TLS without session resumption.
 *
 * Built by the benchmark at run time (cc -O2 fpbload.c -lssl -lcrypto); used where
 * wrk cannot be: (1) new full TLS handshakes per second (wrk keeps its SSL object
 * across reconnects, so it resumes sessions: HAProxy reports 100% reuse under wrk
 * with "Connection: close"), and (2) reloads under load, where every request that
 * did not get a complete 200 answer must be counted and classified (wrk folds
 * resets, early EOFs and parse errors into one "read" counter and reconnects).
 *
 *   fpbload -h 127.0.0.1 -p 8443 -s -c 50 -d 10           # TLS, new connection per request
 *   fpbload -h 127.0.0.1 -p 8080 -k -c 50 -d 10           # plain HTTP keep-alive
 *
 * Options: -h host (IPv4 literal), -p port, -s TLS, -n SNI, -c concurrent connections,
 * -d seconds, -u path, -k keep-alive (default: one request per connection, sent with
 * "Connection: close"), -t per-request timeout in ms (default 2000), -r new requests
 * per second at most (default: as fast as the connections allow), -e max requests.
 *
 * Every request ends as exactly one of: ok (status 200, complete body) or one
 * failure class: connect_refused, connect_timeout, connect_other, connect_local
 * (EADDRNOTAVAIL: the client ran out of ports), reset (ECONNRESET/EPIPE),
 * eof_before_response (closed before any response byte), eof_reused (the same on a
 * keep-alive connection that had already served requests: the race every HTTP
 * client retries), eof_mid_response, tls_error, bad_response (unparsable),
 * status_4xx, status_5xx, status_other, timeout, io_error (another socket
 * error while sending or reading).  A keep-alive connection the
 * server closes after a complete response (Connection: close) is not a failure.
 *
 * Output: one JSON object on stdout with the counts, latency percentiles
 * (microseconds; a request's latency runs from its connect, or for a reused
 * connection from its send, to its last byte), completions and failures per
 * 100 ms, the first failures with their time, resumed TLS sessions (must stay 0:
 * the context has no session cache and no tickets, and no session is ever set),
 * and the negotiated TLS parameters and server key of the first handshake.
 * Bounded: -d seconds of load (SIGUSR1 ends the load earlier), then at most the timeout
 * to finish what is in flight.  Failures keep their time (up to 10000 of them).
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <math.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/objects.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

enum fail {
    F_CONNECT_REFUSED, F_CONNECT_TIMEOUT, F_CONNECT_OTHER, F_CONNECT_LOCAL, F_RESET,
    F_EOF_BEFORE, F_EOF_REUSED, F_EOF_MID, F_TLS, F_BAD_RESPONSE, F_STATUS_4XX,
    F_STATUS_5XX, F_STATUS_OTHER, F_TIMEOUT, F_IO_OTHER, F_COUNT
};
static const char *FAIL_NAMES[F_COUNT] = {
    "connect_refused", "connect_timeout", "connect_other", "connect_local", "reset",
    "eof_before_response", "eof_reused", "eof_mid_response", "tls_error", "bad_response",
    "status_4xx", "status_5xx", "status_other", "timeout", "io_error",
};

enum state { S_IDLE, S_CONNECTING, S_HANDSHAKE, S_SENDING, S_READING };
enum body { B_NONE, B_LENGTH, B_CHUNKED, B_EOF };

#define HEAD_MAX 16384
#define BUCKET_MS 100
#define MAX_EVENTS 100
#define HIST_SUB 64

typedef struct {
    int fd;
    SSL *ssl;
    enum state st;
    int served;           /* complete responses on this connection */
    double t_start;       /* when the current request began (connect or send) */
    size_t sent;
    size_t got;           /* response bytes received for the current request */
    char head[HEAD_MAX];
    size_t head_len;
    int head_done;
    int status;
    int server_close;     /* the response said Connection: close */
    enum body body;
    long long remaining;  /* B_LENGTH: body bytes left; B_CHUNKED: bytes left in chunk */
    int chunk_state;      /* 0 size line, 1 data, 2 CRLF after data, 3 trailers */
    char line[64];
    size_t line_len;
    unsigned events;
} conn_t;

/* Options */
static const char *opt_host = "127.0.0.1";
static int opt_port = 0, opt_tls = 0, opt_conns = 50, opt_keepalive = 0;
static double opt_duration = 10, opt_timeout_ms = 2000, opt_rate = 0;
static long long opt_max = 0;
static const char *opt_sni = NULL, *opt_path = "/";

/* State */
static int ep;
static SSL_CTX *ctx;
static struct sockaddr_in addr;
static char request[1024];
static size_t request_len;
static double t0, stop_at;
static long long ok, started, failures[F_COUNT], resumed, handshakes, reconnects_server_close;
static long long *ok_buckets, *fail_buckets;
static int nbuckets;
static uint64_t hist[64 * HIST_SUB];
static long long hist_n;
static double last_ok = -1, max_gap = 0;
struct failure_event { double t; int kind; int err; };
#define MAX_FAILURE_EVENTS 10000
static struct failure_event first_failures[MAX_FAILURE_EVENTS];
static int nfirst;
static volatile sig_atomic_t stop_requested;

static void on_usr1(int sig) {
    (void)sig;
    stop_requested = 1;
}
static char tls_version[32], tls_cipher[64], tls_group[32], tls_key[32], tls_alpn[32];
static int accepting = 1;

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

static int bucket_of(double t) {
    int b = (int)((t - t0) * 1000 / BUCKET_MS);
    if (b < 0) b = 0;
    if (b >= nbuckets) b = nbuckets - 1;
    return b;
}

static void hist_add(double seconds) {
    uint64_t us = (uint64_t)(seconds * 1e6);
    if (us < 1) us = 1;
    int msb = 63 - __builtin_clzll(us);
    int sub = msb >= 6 ? (int)((us >> (msb - 6)) & (HIST_SUB - 1)) : (int)(us & (HIST_SUB - 1));
    hist[msb * HIST_SUB + sub]++;
    hist_n++;
}

static double hist_value(int i) {
    int msb = i / HIST_SUB, sub = i % HIST_SUB;
    if (msb < 6) return (double)sub;
    /* the middle of the bucket */
    return ((double)(HIST_SUB + sub) + 0.5) * (double)(1ULL << (msb - 6));
}

static double percentile(double p) {
    if (!hist_n) return 0;
    long long want = (long long)ceil(p / 100.0 * hist_n), seen = 0;
    if (want < 1) want = 1;
    for (int i = 0; i < 64 * HIST_SUB; i++) {
        seen += hist[i];
        if (seen >= want) return hist_value(i);
    }
    return 0;
}

static void note_tls(SSL *ssl) {
    if (tls_version[0]) return;
    snprintf(tls_version, sizeof tls_version, "%s", SSL_get_version(ssl));
    snprintf(tls_cipher, sizeof tls_cipher, "%s", SSL_get_cipher_name(ssl));
    int nid = SSL_get_negotiated_group(ssl);
    const char *g = nid ? OBJ_nid2sn(nid) : NULL;
    snprintf(tls_group, sizeof tls_group, "%s", g ? g : "?");
    X509 *cert = SSL_get1_peer_certificate(ssl);
    if (cert) {
        EVP_PKEY *k = X509_get0_pubkey(cert);
        if (k) snprintf(tls_key, sizeof tls_key, "%s %d", OBJ_nid2sn(EVP_PKEY_get_base_id(k)),
                        EVP_PKEY_get_bits(k));
        X509_free(cert);
    }
    const unsigned char *alpn;
    unsigned alpn_len;
    SSL_get0_alpn_selected(ssl, &alpn, &alpn_len);
    snprintf(tls_alpn, sizeof tls_alpn, "%.*s", (int)alpn_len, alpn_len ? (const char *)alpn : "");
}

static void conn_close(conn_t *c) {
    if (c->ssl) {
        SSL_free(c->ssl);
        c->ssl = NULL;
    }
    if (c->fd >= 0) {
        close(c->fd);  /* also removes it from the epoll set */
        c->fd = -1;
    }
    c->st = S_IDLE;
    c->served = 0;
}

static void set_events(conn_t *c, unsigned events) {
    if (c->events == events) return;
    struct epoll_event ev = {.events = events, .data.ptr = c};
    epoll_ctl(ep, EPOLL_CTL_MOD, c->fd, &ev);
    c->events = events;
}

static void record_failure(conn_t *c, int kind, int err) {
    double t = now();
    failures[kind]++;
    fail_buckets[bucket_of(t)]++;
    if (nfirst < (int)(sizeof first_failures / sizeof first_failures[0]))
        first_failures[nfirst++] = (struct failure_event){t - t0, kind, err};
    conn_close(c);
}

static void reset_response(conn_t *c) {
    c->sent = c->got = c->head_len = 0;
    c->head_done = c->status = c->server_close = 0;
    c->body = B_NONE;
    c->remaining = 0;
    c->chunk_state = 0;
    c->line_len = 0;
}

static void start_request(conn_t *c);
static int may_start(double t);

static void finish_ok(conn_t *c) {
    double t = now();
    ok++;
    ok_buckets[bucket_of(t)]++;
    hist_add(t - c->t_start);
    if (last_ok >= 0 && t - last_ok > max_gap) max_gap = t - last_ok;
    last_ok = t;
    c->served++;
    if (!opt_keepalive || c->server_close || !may_start(t)) {
        if (opt_keepalive && c->server_close) reconnects_server_close++;
        if (c->ssl) SSL_shutdown(c->ssl);  /* one close_notify, no waiting */
        conn_close(c);
        return;
    }
    /* the next request on the same connection */
    reset_response(c);
    started++;
    c->t_start = t;
    c->st = S_SENDING;
    set_events(c, EPOLLOUT);
}

/* ---- response parsing -------------------------------------------------------------- */

static int parse_head(conn_t *c) {
    /* c->head holds the complete head; returns 0 or -1 */
    char *p = c->head, *end = c->head + c->head_len;
    if (c->head_len < 12 || strncmp(p, "HTTP/1.", 7) != 0) return -1;
    c->status = atoi(p + 9);
    if (c->status < 100 || c->status > 999) return -1;
    int chunked = 0, has_len = 0;
    long long len = 0;
    char *line = memchr(p, '\n', end - p);
    while (line && line + 1 < end) {
        line++;
        char *eol = memchr(line, '\n', end - line);
        if (!eol) break;
        size_t n = eol - line;
        if (n >= 15 && strncasecmp(line, "content-length:", 15) == 0) {
            len = atoll(line + 15);
            has_len = 1;
        } else if (n >= 18 && strncasecmp(line, "transfer-encoding:", 18) == 0) {
            if (memmem(line, n, "chunked", 7)) chunked = 1;
        } else if (n >= 11 && strncasecmp(line, "connection:", 11) == 0) {
            if (memmem(line, n, "close", 5) || memmem(line, n, "Close", 5)) c->server_close = 1;
        }
        line = eol;
    }
    if (chunked) c->body = B_CHUNKED;
    else if (has_len) { c->body = B_LENGTH; c->remaining = len; }
    else if (c->status == 204 || c->status == 304 || c->status < 200) c->body = B_NONE;
    else { c->body = B_EOF; c->server_close = 1; }
    return 0;
}

/* Feed body bytes; returns 1 when the response is complete, 0 for more, -1 on error. */
static int feed_body(conn_t *c, const char *p, size_t n) {
    if (c->body == B_NONE) return n ? -1 : 1;
    if (c->body == B_EOF) return 0;
    if (c->body == B_LENGTH) {
        if ((long long)n > c->remaining) return -1;
        c->remaining -= n;
        return c->remaining == 0;
    }
    for (size_t i = 0; i < n;) {
        char ch = p[i];
        switch (c->chunk_state) {
        case 0: case 3:  /* a size line, or a trailer line (an empty one ends) */
            if (ch == '\n') {
                c->line[c->line_len < sizeof c->line ? c->line_len : sizeof c->line - 1] = 0;
                size_t l = c->line_len;
                if (l && c->line[l - 1] == '\r') c->line[--l] = 0;
                c->line_len = 0;
                if (c->chunk_state == 3) {
                    if (l == 0) return i + 1 == n ? 1 : -1;
                } else {
                    char *e;
                    long long size = strtoll(c->line, &e, 16);
                    if (e == c->line || size < 0) return -1;
                    if (size == 0) c->chunk_state = 3;
                    else { c->remaining = size; c->chunk_state = 1; }
                }
            } else if (c->line_len < sizeof c->line - 1) {
                c->line[c->line_len++] = ch;
            }
            i++;
            break;
        case 1: {
            size_t take = n - i < (size_t)c->remaining ? n - i : (size_t)c->remaining;
            c->remaining -= take;
            i += take;
            if (!c->remaining) c->chunk_state = 2;
            break;
        }
        case 2:
            if (ch == '\n') c->chunk_state = 0;
            i++;
            break;
        }
    }
    return 0;
}

static int status_failure(int status) {
    if (status >= 500 && status < 600) return F_STATUS_5XX;
    if (status >= 400 && status < 500) return F_STATUS_4XX;
    return F_STATUS_OTHER;
}

/* Returns 1 when complete. */
static int feed(conn_t *c, const char *p, size_t n) {
    c->got += n;
    if (!c->head_done) {
        size_t room = HEAD_MAX - c->head_len;
        size_t take = n < room ? n : room;
        memcpy(c->head + c->head_len, p, take);
        size_t old = c->head_len;
        c->head_len += take;
        char *end = memmem(c->head + (old > 3 ? old - 3 : 0), c->head_len - (old > 3 ? old - 3 : 0),
                           "\r\n\r\n", 4);
        if (!end) {
            if (c->head_len == HEAD_MAX) return -1;
            return 0;
        }
        size_t head_size = end + 4 - c->head;
        c->head_len = head_size;
        c->head_done = 1;
        if (parse_head(c) < 0) return -1;
        size_t used = head_size - old;
        return feed_body(c, p + used, n - used);
    }
    return feed_body(c, p, n);
}

/* ---- I/O ------------------------------------------------------------------------------ */

static int io_error_kind(int err) {
    return (err == ECONNRESET || err == EPIPE) ? F_RESET : F_IO_OTHER;
}

static void on_eof(conn_t *c) {
    if (c->head_done && c->body == B_EOF) {
        if (c->status == 200) finish_ok(c);
        else record_failure(c, status_failure(c->status), 0);
        return;
    }
    if (c->got) record_failure(c, F_EOF_MID, 0);
    else record_failure(c, c->served ? F_EOF_REUSED : F_EOF_BEFORE, 0);
}

static void do_read(conn_t *c) {
    char buf[65536];
    for (;;) {
        ssize_t n;
        if (c->ssl) {
            ERR_clear_error();
            errno = 0;
            n = SSL_read(c->ssl, buf, sizeof buf);
            if (n <= 0) {
                int e = SSL_get_error(c->ssl, (int)n);
                if (e == SSL_ERROR_WANT_READ) { set_events(c, EPOLLIN); return; }
                if (e == SSL_ERROR_WANT_WRITE) { set_events(c, EPOLLOUT); return; }
                if (e == SSL_ERROR_ZERO_RETURN) { on_eof(c); return; }
                if (e == SSL_ERROR_SYSCALL) {
                    if (errno == 0 || n == 0) on_eof(c);
                    else record_failure(c, io_error_kind(errno), errno);
                    return;
                }
                record_failure(c, F_TLS, 0);
                return;
            }
        } else {
            n = read(c->fd, buf, sizeof buf);
            if (n < 0) {
                if (errno == EAGAIN || errno == EINTR) return;
                record_failure(c, io_error_kind(errno), errno);
                return;
            }
            if (n == 0) { on_eof(c); return; }
        }
        int r = feed(c, buf, (size_t)n);
        if (r < 0) { record_failure(c, F_BAD_RESPONSE, 0); return; }
        if (r > 0) {
            if (c->status == 200) finish_ok(c);
            else record_failure(c, status_failure(c->status), 0);
            return;
        }
    }
}

static void do_send(conn_t *c) {
    while (c->sent < request_len) {
        ssize_t n;
        if (c->ssl) {
            ERR_clear_error();
            errno = 0;
            n = SSL_write(c->ssl, request + c->sent, (int)(request_len - c->sent));
            if (n <= 0) {
                int e = SSL_get_error(c->ssl, (int)n);
                if (e == SSL_ERROR_WANT_WRITE) { set_events(c, EPOLLOUT); return; }
                if (e == SSL_ERROR_WANT_READ) { set_events(c, EPOLLIN); return; }
                if (e == SSL_ERROR_SYSCALL && errno) record_failure(c, io_error_kind(errno), errno);
                else if (e == SSL_ERROR_SYSCALL || e == SSL_ERROR_ZERO_RETURN) on_eof(c);
                else record_failure(c, F_TLS, 0);
                return;
            }
        } else {
            n = write(c->fd, request + c->sent, request_len - c->sent);
            if (n < 0) {
                if (errno == EAGAIN || errno == EINTR) { set_events(c, EPOLLOUT); return; }
                record_failure(c, io_error_kind(errno), errno);
                return;
            }
        }
        c->sent += (size_t)n;
    }
    c->st = S_READING;
    set_events(c, EPOLLIN);
    do_read(c);
}

static void do_handshake(conn_t *c) {
    ERR_clear_error();
    errno = 0;
    int r = SSL_connect(c->ssl);
    if (r == 1) {
        handshakes++;
        if (SSL_session_reused(c->ssl)) resumed++;
        note_tls(c->ssl);
        c->st = S_SENDING;
        do_send(c);
        return;
    }
    int e = SSL_get_error(c->ssl, r);
    if (e == SSL_ERROR_WANT_READ) { set_events(c, EPOLLIN); return; }
    if (e == SSL_ERROR_WANT_WRITE) { set_events(c, EPOLLOUT); return; }
    if (e == SSL_ERROR_SYSCALL) {
        if (errno == ECONNRESET || errno == EPIPE) record_failure(c, F_RESET, errno);
        else record_failure(c, F_EOF_BEFORE, errno);
        return;
    }
    record_failure(c, F_TLS, 0);
}

static void start_request(conn_t *c) {
    reset_response(c);
    c->t_start = now();
    started++;
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        c->fd = -1;
        record_failure(c, F_CONNECT_LOCAL, errno);
        return;
    }
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    c->fd = fd;
    c->served = 0;
    c->events = EPOLLOUT;
    struct epoll_event ev = {.events = EPOLLOUT, .data.ptr = c};
    epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev);
    if (connect(fd, (struct sockaddr *)&addr, sizeof addr) < 0 && errno != EINPROGRESS) {
        int err = errno;
        record_failure(c, err == ECONNREFUSED ? F_CONNECT_REFUSED
                          : err == EADDRNOTAVAIL ? F_CONNECT_LOCAL : F_CONNECT_OTHER, err);
        return;
    }
    c->st = S_CONNECTING;
}

static void on_connected(conn_t *c) {
    int err = 0;
    socklen_t len = sizeof err;
    getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &len);
    if (err) {
        record_failure(c, err == ECONNREFUSED ? F_CONNECT_REFUSED
                          : err == ETIMEDOUT ? F_CONNECT_TIMEOUT
                          : err == EADDRNOTAVAIL ? F_CONNECT_LOCAL
                          : err == ECONNRESET ? F_RESET : F_CONNECT_OTHER, err);
        return;
    }
    if (opt_tls) {
        c->ssl = SSL_new(ctx);
        SSL_set_fd(c->ssl, c->fd);
        if (opt_sni) SSL_set_tlsext_host_name(c->ssl, opt_sni);
        SSL_set_connect_state(c->ssl);
        c->st = S_HANDSHAKE;
        do_handshake(c);
    } else {
        c->st = S_SENDING;
        do_send(c);
    }
}

static void on_event(conn_t *c) {
    switch (c->st) {
    case S_CONNECTING: on_connected(c); break;
    case S_HANDSHAKE: do_handshake(c); break;
    case S_SENDING: do_send(c); break;
    case S_READING: do_read(c); break;
    case S_IDLE: break;
    }
}

static int may_start(double t) {
    if (!accepting || t >= stop_at) return 0;
    if (opt_max && started >= opt_max) return 0;
    if (opt_rate > 0 && started >= (long long)(opt_rate * (t - t0)) + 1) return 0;
    return 1;
}

static void usage(void) {
    fprintf(stderr, "usage: fpbload -h HOST -p PORT [-s] [-n SNI] [-c CONNS] [-d SECONDS] [-u PATH] "
                    "[-k] [-t TIMEOUT_MS] [-r RATE] [-e MAX_REQUESTS]\n");
    exit(2);
}

int main(int argc, char **argv) {
    int o;
    while ((o = getopt(argc, argv, "h:p:sn:c:d:u:kt:r:e:")) != -1) {
        switch (o) {
        case 'h': opt_host = optarg; break;
        case 'p': opt_port = atoi(optarg); break;
        case 's': opt_tls = 1; break;
        case 'n': opt_sni = optarg; break;
        case 'c': opt_conns = atoi(optarg); break;
        case 'd': opt_duration = atof(optarg); break;
        case 'u': opt_path = optarg; break;
        case 'k': opt_keepalive = 1; break;
        case 't': opt_timeout_ms = atof(optarg); break;
        case 'r': opt_rate = atof(optarg); break;
        case 'e': opt_max = atoll(optarg); break;
        default: usage();
        }
    }
    if (opt_port <= 0 || opt_conns <= 0 || opt_duration <= 0 || opt_duration > 3600) usage();
    signal(SIGPIPE, SIG_IGN);
    struct sigaction sa = {.sa_handler = on_usr1};
    sigemptyset(&sa.sa_mask);
    sigaction(SIGUSR1, &sa, NULL);
    memset(&addr, 0, sizeof addr);
    addr.sin_family = AF_INET;
    addr.sin_port = htons((uint16_t)opt_port);
    if (inet_pton(AF_INET, opt_host, &addr.sin_addr) != 1) usage();
    request_len = (size_t)snprintf(request, sizeof request,
                                   "GET %s HTTP/1.1\r\nHost: %s\r\nUser-Agent: fpbload\r\n%s\r\n",
                                   opt_path, opt_sni ? opt_sni : opt_host,
                                   opt_keepalive ? "" : "Connection: close\r\n");
    if (opt_tls) {
        ctx = SSL_CTX_new(TLS_client_method());
        SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION);
        SSL_CTX_set_verify(ctx, SSL_VERIFY_NONE, NULL);
        /* No resumption: no client session cache, no tickets, never SSL_set_session(). */
        SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_OFF);
        SSL_CTX_set_options(ctx, SSL_OP_NO_TICKET);
        static const unsigned char alpn[] = "\x08http/1.1";
        SSL_CTX_set_alpn_protos(ctx, alpn, sizeof alpn - 1);
    }
    ep = epoll_create1(EPOLL_CLOEXEC);
    nbuckets = (int)((opt_duration * 1000 + opt_timeout_ms) / BUCKET_MS) + 2;
    ok_buckets = calloc(nbuckets, sizeof *ok_buckets);
    fail_buckets = calloc(nbuckets, sizeof *fail_buckets);
    conn_t *conns = calloc(opt_conns, sizeof *conns);
    if (!conns || !ok_buckets || !fail_buckets) return 1;
    for (int i = 0; i < opt_conns; i++) conns[i].fd = -1;

    t0 = now();
    stop_at = t0 + opt_duration;
    double next_scan = t0;
    struct epoll_event events[MAX_EVENTS];
    for (;;) {
        double t = now();
        if (stop_requested && t < stop_at) stop_at = t;
        if (t >= stop_at) accepting = 0;
        double hard_stop = stop_at + opt_timeout_ms / 1000 + 1;
        int busy = 0;
        for (int i = 0; i < opt_conns; i++) {
            conn_t *c = &conns[i];
            if (c->st == S_IDLE && may_start(t)) start_request(c);
            if (c->st != S_IDLE) busy++;
        }
        if (!accepting && !busy) break;
        if (t >= hard_stop) break;
        if (t >= next_scan) {  /* per-request timeouts */
            for (int i = 0; i < opt_conns; i++) {
                conn_t *c = &conns[i];
                if (c->st != S_IDLE && (t - c->t_start) * 1000 > opt_timeout_ms)
                    record_failure(c, c->st == S_CONNECTING ? F_CONNECT_TIMEOUT : F_TIMEOUT, 0);
            }
            next_scan = t + 0.01;
        }
        int n = epoll_wait(ep, events, MAX_EVENTS, 5);
        for (int i = 0; i < n; i++) on_event(events[i].data.ptr);
    }
    double elapsed = now() - t0;
    long long unfinished = 0;
    for (int i = 0; i < opt_conns; i++)
        if (conns[i].st != S_IDLE) { unfinished++; record_failure(&conns[i], F_TIMEOUT, 0); }

    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    long long failed = 0;
    for (int k = 0; k < F_COUNT; k++) failed += failures[k];
    printf("{\"t0_monotonic\":%.6f,\"duration_s\":%.6f,\"requests\":%lld,\"ok\":%lld,\"failed\":%lld,\"unfinished\":%lld,",
           t0, elapsed, ok + failed, ok, failed, unfinished);
    printf("\"tls\":%s,\"keepalive\":%s,\"handshakes\":%lld,\"resumed\":%lld,"
           "\"server_closed_keepalive\":%lld,",
           opt_tls ? "true" : "false", opt_keepalive ? "true" : "false", handshakes, resumed,
           reconnects_server_close);
    printf("\"tls_version\":\"%s\",\"tls_cipher\":\"%s\",\"tls_group\":\"%s\",\"tls_server_key\":\"%s\","
           "\"tls_alpn\":\"%s\",", tls_version, tls_cipher, tls_group, tls_key, tls_alpn);
    printf("\"p50_us\":%.0f,\"p90_us\":%.0f,\"p99_us\":%.0f,\"p999_us\":%.0f,\"max_gap_ms\":%.1f,",
           percentile(50), percentile(90), percentile(99), percentile(99.9), max_gap * 1000);
    printf("\"cpu_s\":%.3f,\"errors\":{", ru.ru_utime.tv_sec + ru.ru_utime.tv_usec / 1e6 +
                                          ru.ru_stime.tv_sec + ru.ru_stime.tv_usec / 1e6);
    for (int k = 0; k < F_COUNT; k++) printf("%s\"%s\":%lld", k ? "," : "", FAIL_NAMES[k], failures[k]);
    printf("},\"bucket_ms\":%d,\"ok_per_bucket\":[", BUCKET_MS);
    int used = bucket_of(t0 + elapsed) + 1;
    for (int b = 0; b < used; b++) printf("%s%lld", b ? "," : "", ok_buckets[b]);
    printf("],\"failed_per_bucket\":[");
    for (int b = 0; b < used; b++) printf("%s%lld", b ? "," : "", fail_buckets[b]);
    printf("],\"failures_kept\":%d,\"first_failures\":[", nfirst);
    for (int i = 0; i < nfirst; i++)
        printf("%s{\"t_ms\":%.1f,\"kind\":\"%s\",\"errno\":%d}", i ? "," : "", first_failures[i].t * 1000,
               FAIL_NAMES[first_failures[i].kind], first_failures[i].err);
    printf("]}\n");
    return 0;
}
