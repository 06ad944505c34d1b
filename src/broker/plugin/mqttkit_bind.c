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
 * No libc: the library has no DT_NEEDED entries, so the same file loads into
 * a glibc mosquitto (Debian) and a musl one (the Alpine-based eclipse-mosquitto
 * image). Every function it calls is mosquitto's or libcrypto's, which the
 * mosquitto process has loaded; they are declared here (no mosquitto-dev or
 * libssl-dev headers needed), with the layouts of mosquitto 2.0's
 * include/mosquitto_broker.h and mosquitto_plugin.h.
 */

#define NAME_MAX_LEN 128
#define SERVERS_MAX 32

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
#define MOSQ_ERR_SUCCESS 0
#define MOSQ_ERR_INVAL 3
#define MOSQ_ERR_AUTH 11
#define MOSQ_ERR_PLUGIN_DEFER 17
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
		} else {
			mosquitto_log_printf(MOSQ_LOG_ERR, "mqttkit_bind: bad option plugin_opt_%s %s",
					     key, value);
			return MOSQ_ERR_INVAL;
		}
	}
	plugin_id = identifier;
	return mosquitto_callback_register(plugin_id, MOSQ_EVT_BASIC_AUTH, on_basic_auth, 0, 0);
}

int mosquitto_plugin_cleanup(void *userdata, struct mosquitto_opt *options, int option_count)
{
	(void)userdata;
	(void)options;
	(void)option_count;
	return mosquitto_callback_unregister(plugin_id, MOSQ_EVT_BASIC_AUTH, on_basic_auth, 0);
}
