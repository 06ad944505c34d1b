/*
 * mqttkit_bind: a mosquitto 2.0 plugin (plugin API v5) that binds MQTT client
 * ids to identities, so no client can connect with, take over or destroy the
 * session of another identity's client id. `mqttkit broker up` builds it into
 * the binary (build.rs), writes it next to mosquitto.conf and loads it there.
 *
 * Why a plugin: mosquitto 2.0 does not tie the client id to the identity, and
 * on a listener with `use_identity_as_username` it calls no plugin's basic
 * auth at all (handle_connect.c: "Authentication assumed to be cleared"); so
 * the listener runs without that option and this plugin does its work: it
 * takes the certificate's CN and makes it the user name the ACL's %u sees.
 *
 * The rule, for the identity NAME a client connects as (`identity cert`: its
 * certificate's CN; `identity username`: its MQTT user name, whose password
 * mosquitto's password_file then checks as before):
 *   - the client id is NAME, or starts with "NAME-";
 *   - a server identity (`servers`, comma-separated) may use any client id
 *     (`pki revoke` ends a revoked device's sessions by taking its ids over).
 * Anything else gets CONNACK "not authorized", which mosquitto sends before it
 * looks up (and takes over) an existing session of that id.
 *
 * It also answers SUBSCRIBE, which mosquitto 2.0's acl_file grants whatever
 * the filter (security_default.c: "FIXME - implement ACL subscription
 * strings") and only filters on delivery: a client would get SUBACK success
 * for a filter it may never read, and could not tell "nothing published"
 * from "not allowed". Here a filter that can match no topic the client may
 * read (by the `read` options, the ACL file's own read lines: `device_read`
 * for every client, with %u its user name; `server_read` also for server
 * identities) gets SUBACK 0x87 "not authorized" (3.1.1: 0x80). A wider
 * filter that includes readable topics (`plant/#`) is granted, and the ACL
 * file still delivers only what is readable. Publishes stay the ACL file's.
 *
 * No libc: the library has no DT_NEEDED entries, so the same file loads into
 * a glibc mosquitto (Debian) and a musl one (the Alpine-based eclipse-mosquitto
 * image). Every function it calls is mosquitto's or libcrypto's, which the
 * mosquitto process has loaded; they are declared here (no mosquitto-dev or
 * libssl-dev headers needed), with the layouts of mosquitto 2.0's
 * include/mosquitto_broker.h and mosquitto_plugin.h.
 */

#define NAME_MAX_LEN 128
#define SERVERS_MAX 32
#define READS_MAX 64
#define FILTER_MAX_LEN 1024

/* --- mosquitto 2.0 plugin API (include/mosquitto_broker.h, mosquitto.h) --- */
struct mosquitto;
typedef struct mosquitto_plugin_id_t mosquitto_plugin_id_t;
struct mosquitto_opt {
	char *key;
	char *value;
};
struct mosquitto_evt_basic_auth {
	void *future;
	struct mosquitto *client;
	char *username;
	char *password;
	void *future2[4];
};
#define MOSQ_EVT_BASIC_AUTH 3
#define MOSQ_EVT_ACL_CHECK 2
#define MOSQ_ACL_SUBSCRIBE 0x04
#define MOSQ_ERR_ACL_DENIED 12
#define MOSQ_ERR_SUCCESS 0
#define MOSQ_ERR_INVAL 3
#define MOSQ_ERR_AUTH 11
#define MOSQ_ERR_PLUGIN_DEFER 17
struct mosquitto_evt_acl_check {
	void *future;
	struct mosquitto *client;
	const char *topic;
	const void *payload;
	void *properties;
	int access;
	unsigned int payloadlen;
	unsigned char qos;
	_Bool retain;
	void *future2[4];
};
#define MOSQ_LOG_NOTICE (1 << 1)
#define MOSQ_LOG_ERR (1 << 3)

typedef int (*mosq_callback)(int event, void *event_data, void *userdata);
int mosquitto_callback_register(mosquitto_plugin_id_t *id, int event, mosq_callback cb,
				const void *event_data, void *userdata);
int mosquitto_callback_unregister(mosquitto_plugin_id_t *id, int event, mosq_callback cb,
				  const void *event_data);
void mosquitto_log_printf(int level, const char *fmt, ...);
const char *mosquitto_client_id(const struct mosquitto *client);
const char *mosquitto_client_username(const struct mosquitto *client);
void *mosquitto_client_certificate(const struct mosquitto *client);
int mosquitto_set_username(struct mosquitto *client, const char *username);

/* --- libcrypto (OpenSSL 1.1 and 3), as mosquitto's own CN lookup uses it --- */
typedef struct x509_st X509;
typedef struct X509_name_st X509_NAME;
typedef struct X509_name_entry_st X509_NAME_ENTRY;
typedef struct asn1_string_st ASN1_STRING;
#define NID_commonName 13
X509_NAME *X509_get_subject_name(const X509 *x);
int X509_NAME_get_index_by_NID(const X509_NAME *name, int nid, int lastpos);
X509_NAME_ENTRY *X509_NAME_get_entry(const X509_NAME *name, int loc);
ASN1_STRING *X509_NAME_ENTRY_get_data(const X509_NAME_ENTRY *ne);
const unsigned char *ASN1_STRING_get0_data(const ASN1_STRING *x);
int ASN1_STRING_length(const ASN1_STRING *x);
void X509_free(X509 *x);

/* --- state: one instance per broker (per_listener_settings false) --- */
static mosquitto_plugin_id_t *plugin_id;
static int identity_from_cert = 1;
static char servers[SERVERS_MAX][NAME_MAX_LEN + 1];
static int server_count;
/* Filters a client may subscribe within: for everyone / for servers. */
struct reads {
	char filter[READS_MAX][FILTER_MAX_LEN + 1];
	int count;
};
static struct reads device_reads, server_reads;
static int check_subscribe;

static int str_eq(const char *a, const char *b)
{
	while (*a && *a == *b) {
		a++;
		b++;
	}
	return *a == *b;
}

/* The client id belongs to `name`: it is `name` or starts with "name-". */
static int id_belongs_to(const char *id, const char *name)
{
	while (*name && *id == *name) {
		id++;
		name++;
	}
	return *name == '\0' && (*id == '\0' || *id == '-');
}

static int is_server(const char *name)
{
	for (int i = 0; i < server_count; i++) {
		if (str_eq(servers[i], name)) {
			return 1;
		}
	}
	return 0;
}

/* Copies the certificate's first CN into `out`, as mosquitto's
 * use_identity_as_username does (its bytes; none with an embedded NUL). */
static int cert_cn(struct mosquitto *client, char out[NAME_MAX_LEN + 1])
{
	X509 *cert = mosquitto_client_certificate(client);
	int ok = 0;
	if (!cert) {
		return 0;
	}
	X509_NAME *subject = X509_get_subject_name(cert);
	int at = subject ? X509_NAME_get_index_by_NID(subject, NID_commonName, -1) : -1;
	X509_NAME_ENTRY *entry = at >= 0 ? X509_NAME_get_entry(subject, at) : 0;
	ASN1_STRING *data = entry ? X509_NAME_ENTRY_get_data(entry) : 0;
	if (data) {
		const unsigned char *bytes = ASN1_STRING_get0_data(data);
		int len = ASN1_STRING_length(data);
		ok = len > 0 && len <= NAME_MAX_LEN;
		for (int i = 0; ok && i < len; i++) {
			ok = bytes[i] != 0;
			out[i] = (char)bytes[i];
		}
		if (ok) {
			out[len] = '\0';
		}
	}
	X509_free(cert);
	return ok;
}

static int refuse(const char *id, const char *name)
{
	mosquitto_log_printf(MOSQ_LOG_NOTICE,
			     "mqttkit_bind: refused client id '%s' for identity '%s' "
			     "(an identity may use only its name or ids starting with 'NAME-')",
			     id, name);
	return MOSQ_ERR_AUTH;
}

static int on_basic_auth(int event, void *event_data, void *userdata)
{
	struct mosquitto_evt_basic_auth *ed = event_data;
	const char *id = mosquitto_client_id(ed->client);
	char cn[NAME_MAX_LEN + 1];
	const char *name;
	(void)event;
	(void)userdata;
	if (identity_from_cert) {
		if (!cert_cn(ed->client, cn)) {
			mosquitto_log_printf(MOSQ_LOG_NOTICE,
					     "mqttkit_bind: refused client '%s': no usable certificate CN",
					     id ? id : "");
			return MOSQ_ERR_AUTH;
		}
		name = cn;
	} else {
		name = mosquitto_client_username(ed->client);
		if (!name) {
			/* No user name: mosquitto refuses it (allow_anonymous false). */
			return MOSQ_ERR_PLUGIN_DEFER;
		}
	}
	if (!id || !(is_server(name) || id_belongs_to(id, name))) {
		return refuse(id ? id : "", name);
	}
	if (!identity_from_cert) {
		/* The password file decides next. */
		return MOSQ_ERR_PLUGIN_DEFER;
	}
	/* The CN is the user name the ACL's %u sees. */
	if (mosquitto_set_username(ed->client, name) != MOSQ_ERR_SUCCESS) {
		return MOSQ_ERR_AUTH;
	}
	return MOSQ_ERR_SUCCESS;
}

/* `servers`: comma-separated identity names. */
static int parse_servers(const char *list)
{
	int len = 0;
	server_count = 0;
	for (const char *p = list;; p++) {
		if (*p == ',' || *p == '\0') {
			if (len > 0) {
				if (server_count == SERVERS_MAX) {
					return 0;
				}
				servers[server_count][len] = '\0';
				server_count++;
			}
			len = 0;
			if (*p == '\0') {
				return 1;
			}
		} else {
			if (len == NAME_MAX_LEN || server_count == SERVERS_MAX) {
				return 0;
			}
			servers[server_count][len++] = *p;
		}
	}
}

/* Copies `value` into the next slot of `r`; 0 when it does not fit. */
static int add_read(struct reads *r, const char *value)
{
	int len = 0;
	if (r->count == READS_MAX) {
		return 0;
	}
	for (; value[len]; len++) {
		if (len == FILTER_MAX_LEN) {
			return 0;
		}
		r->filter[r->count][len] = value[len];
	}
	r->filter[r->count][len] = '\0';
	r->count++;
	check_subscribe = 1;
	return len > 0;
}

/* The length of the topic level starting at `s`. */
static int level_len(const char *s)
{
	int n = 0;
	while (s[n] && s[n] != '/') {
		n++;
	}
	return n;
}

static int level_is(const char *s, int len, const char *word)
{
	int i = 0;
	for (; i < len && word[i] && s[i] == word[i]; i++) {
	}
	return i == len && word[i] == '\0';
}

/* Whether some topic matches both `filter` and `allowed`, whose whole-level
 * "%u" stands for `user` (as in the ACL file's patterns). */
static int intersects(const char *allowed, const char *filter, const char *user)
{
	for (;;) {
		int a = level_len(allowed), f = level_len(filter);
		if (level_is(allowed, a, "#") || level_is(filter, f, "#")) {
			return 1;
		}
		if (!level_is(allowed, a, "+") && !level_is(filter, f, "+")) {
			const char *want = allowed;
			int want_len = a;
			if (level_is(allowed, a, "%u")) {
				want = user;
				want_len = level_len(user);
				if (user[want_len]) {
					return 0; /* a user name with '/' stands for no level */
				}
			}
			if (want_len != f) {
				return 0;
			}
			for (int i = 0; i < f; i++) {
				if (want[i] != filter[i]) {
					return 0;
				}
			}
		}
		allowed += a;
		filter += f;
		if (!*allowed || !*filter) {
			/* Both end here, or the longer one ends in "/#" ("a/#" matches "a"). */
			const char *rest = *allowed ? allowed : filter;
			return !*rest || (rest[0] == '/' && rest[1] == '#' && !rest[2]);
		}
		allowed++;
		filter++;
	}
}

static int readable(const struct reads *r, const char *filter, const char *user)
{
	for (int i = 0; i < r->count; i++) {
		if (intersects(r->filter[i], filter, user)) {
			return 1;
		}
	}
	return 0;
}

/* "$share/GROUP/FILTER" reads what FILTER reads. */
static const char *unshared(const char *filter)
{
	const char *p = filter;
	const char *prefix = "$share/";
	for (; *prefix; prefix++, p++) {
		if (*p != *prefix) {
			return filter;
		}
	}
	p += level_len(p);
	return *p == '/' ? p + 1 : filter;
}

static int on_acl_check(int event, void *event_data, void *userdata)
{
	struct mosquitto_evt_acl_check *ed = event_data;
	const char *user = mosquitto_client_username(ed->client);
	(void)event;
	(void)userdata;
	if (ed->access != MOSQ_ACL_SUBSCRIBE) {
		return MOSQ_ERR_PLUGIN_DEFER; /* the ACL file decides */
	}
	if (user && *user) {
		const char *filter = unshared(ed->topic);
		if (readable(&device_reads, filter, user) ||
		    (is_server(user) && readable(&server_reads, filter, user))) {
			return MOSQ_ERR_PLUGIN_DEFER; /* granted by the ACL file */
		}
	}
	mosquitto_log_printf(MOSQ_LOG_NOTICE,
			     "mqttkit_bind: denied SUBSCRIBE '%s' for identity '%s' (it matches no topic the ACL lets it read)",
			     ed->topic, user ? user : "");
	return MOSQ_ERR_ACL_DENIED;
}

int mosquitto_plugin_version(int supported_version_count, const int *supported_versions)
{
	for (int i = 0; i < supported_version_count; i++) {
		if (supported_versions[i] == 5) {
			return 5;
		}
	}
	return -1;
}

int mosquitto_plugin_init(mosquitto_plugin_id_t *identifier, void **userdata,
			  struct mosquitto_opt *options, int option_count)
{
	(void)userdata;
	for (int i = 0; i < option_count; i++) {
		const char *key = options[i].key, *value = options[i].value;
		if (str_eq(key, "identity") && (str_eq(value, "cert") || str_eq(value, "username"))) {
			identity_from_cert = str_eq(value, "cert");
		} else if (str_eq(key, "servers") && parse_servers(value)) {
			continue;
		} else if (str_eq(key, "device_read") && add_read(&device_reads, value)) {
			continue;
		} else if (str_eq(key, "server_read") && add_read(&server_reads, value)) {
			continue;
		} else {
			mosquitto_log_printf(MOSQ_LOG_ERR, "mqttkit_bind: bad option plugin_opt_%s %s",
					     key, value);
			return MOSQ_ERR_INVAL;
		}
	}
	plugin_id = identifier;
	int rc = mosquitto_callback_register(plugin_id, MOSQ_EVT_BASIC_AUTH, on_basic_auth, 0, 0);
	if (rc == MOSQ_ERR_SUCCESS && check_subscribe) {
		/* Registered before mosquitto's own ACL check (plugins load
		 * first), which would grant every SUBSCRIBE. */
		rc = mosquitto_callback_register(plugin_id, MOSQ_EVT_ACL_CHECK, on_acl_check, 0, 0);
	}
	return rc;
}

int mosquitto_plugin_cleanup(void *userdata, struct mosquitto_opt *options, int option_count)
{
	(void)userdata;
	(void)options;
	(void)option_count;
	if (check_subscribe) {
		mosquitto_callback_unregister(plugin_id, MOSQ_EVT_ACL_CHECK, on_acl_check, 0);
	}
	return mosquitto_callback_unregister(plugin_id, MOSQ_EVT_BASIC_AUTH, on_basic_auth, 0);
}
