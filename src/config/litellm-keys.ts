/**
 * LiteLLM's own configuration keys, by section, as LiteLLM documents them.
 * An operator's existing LiteLLM proxy config.yaml holds many settings this
 * project has no use for (callbacks, routing, alerting, ...): the keys listed
 * here are accepted, set aside unread and named in one start-up warning, so
 * such a file loads as it is. Any other key that is not ours is still refused,
 * so a typo in one of our keys fails fast.
 *
 * Lists are copied from LiteLLM's documentation (repository BerriAI/litellm;
 * paths below are under docs/my-website/docs/), not from memory. A key this
 * project reads (master_key, database_url, cache_params, ...) may appear here
 * too: it is read and validated as ours, never set aside.
 */

/**
 * Whole top-level sections LiteLLM has and this project does not read: set
 * aside with everything in them, unvalidated (their os.environ/ references
 * are not resolved either).
 * - router_settings, environment_variables, callback_settings:
 *   proxy/config_settings.md ("All settings") and proxy/configs.md;
 * - guardrails: proxy/guardrails/quick_start.md;
 * - credential_list: proxy/configs.md ("Centralized Credential Management");
 * - mcp_servers: mcp.md;
 * - vector_store_registry: completion/knowledgebase.md.
 * Not here, so still refused: `include` (proxy/config_management.md), which
 * pulls in other files whose model_list and settings this project would
 * silently miss.
 */
export const LITELLM_SECTIONS: readonly string[] = [
  "router_settings",
  "environment_variables",
  "callback_settings",
  "guardrails",
  "credential_list",
  "mcp_servers",
  "vector_store_registry",
];

/**
 * general_settings: proxy/config_settings.md, its example file and its
 * "general_settings - Reference" table. Left out, so still refused: the keys
 * that restrict who may call the proxy and what it accepts (allowed_ips,
 * allowed_routes, admin_only_routes, custom_auth, enforced_params,
 * enforce_user_param, reject_clientside_metadata_tags): a gateway that
 * ignored them would serve what the operator meant to refuse, which a
 * warning in a log does not undo.
 */
export const LITELLM_GENERAL_SETTINGS: readonly string[] = [
  "completion_model",
  "disable_spend_logs",
  "disable_spend_updates",
  "disable_master_key_return",
  "disable_retry_on_max_parallel_request_limit_error",
  "disable_reset_budget",
  "disable_adding_master_key_hash_to_db",
  "disable_responses_id_security",
  "enable_jwt_auth",
  "key_management_system",
  "master_key",
  "database_url",
  "database_connection_pool_limit",
  "database_connection_timeout",
  "allow_requests_on_db_unavailable",
  "max_parallel_requests",
  "global_max_parallel_requests",
  "infer_model_from_keys",
  "background_health_checks",
  "health_check_interval",
  "alerting",
  "alerting_threshold",
  "use_client_credentials_pass_through_routes",
  "health_check_details",
  "public_routes",
  "alert_types",
  "enable_oauth2_auth",
  "use_x_forwarded_for",
  "service_account_settings",
  "image_generation_model",
  "store_model_in_db",
  "supported_db_objects",
  "user_mcp_management_mode",
  "store_prompts_in_spend_logs",
  "max_request_size_mb",
  "max_response_size_mb",
  "proxy_budget_rescheduler_min_time",
  "proxy_budget_rescheduler_max_time",
  "proxy_batch_write_at",
  "proxy_batch_polling_interval",
  "alerting_args",
  "custom_key_generate",
  "embedding_model",
  "default_team_disabled",
  "alert_to_webhook_url",
  "key_management_settings",
  "allow_user_auth",
  "user_api_key_cache_ttl",
  "disable_prisma_schema_update",
  "litellm_key_header_name",
  "moderation_model",
  "custom_sso",
  "allow_client_side_credentials",
  "use_azure_key_vault",
  "use_google_kms",
  "spend_report_frequency",
  "ui_access_mode",
  "litellm_jwtauth",
  "litellm_license",
  "oauth2_config_mappings",
  "pass_through_endpoints",
  "enable_oauth2_proxy_auth",
  "forward_openai_org_id",
  "forward_client_headers_to_llm_api",
  "maximum_spend_logs_retention_period",
  "maximum_spend_logs_retention_interval",
];

/**
 * litellm_settings: proxy/config_settings.md (example file and
 * "litellm_settings - Reference" table); drop_params, num_retries, fallbacks
 * and allowed_fails from proxy/configs.md's examples; guardrails (the older
 * form, under litellm_settings) from proxy/guardrails.md.
 */
export const LITELLM_LITELLM_SETTINGS: readonly string[] = [
  "success_callback",
  "failure_callback",
  "callbacks",
  "service_callbacks",
  "turn_off_message_logging",
  "modify_params",
  "enable_preview_features",
  "redact_user_api_key_info",
  "mcp_aliases",
  "langfuse_default_tags",
  "set_verbose",
  "json_logs",
  "default_fallbacks",
  "request_timeout",
  "force_ipv4",
  "content_policy_fallbacks",
  "context_window_fallbacks",
  "cache",
  "cache_params",
  "disable_end_user_cost_tracking",
  "disable_end_user_cost_tracking_prometheus_only",
  "key_generation_settings",
  "disable_add_transform_inline_image_block",
  "use_chat_completions_url_for_anthropic_messages",
  "disable_hf_tokenizer_download",
  "enable_json_schema_validation",
  "enable_key_alias_format_validation",
  "disable_copilot_system_to_assistant",
  "drop_params",
  "num_retries",
  "fallbacks",
  "allowed_fails",
  "guardrails",
];

/**
 * litellm_settings.cache_params: proxy/config_settings.md's example file.
 * Left out, so still refused: redis_startup_nodes, service_name and
 * sentinel_nodes (Redis Cluster and Sentinel in LiteLLM's names) and
 * gcp_service_account, gcp_ssl_ca_certs, ssl_cert_reqs and
 * ssl_check_hostname (how to authenticate and verify TLS): ignoring them
 * would send the spend buffer to another Redis, or connect to it otherwise,
 * than the file says (see LITELLM_REFUSED for what to write instead).
 */
export const LITELLM_CACHE_PARAMS: readonly string[] = [
  "type",
  "host",
  "port",
  "password",
  "namespace",
  "max_connections",
  "ssl",
  "qdrant_semantic_cache_embedding_model",
  "qdrant_collection_name",
  "qdrant_quantization_config",
  "qdrant_semantic_cache_vector_size",
  "similarity_threshold",
  "s3_bucket_name",
  "s3_region_name",
  "s3_aws_access_key_id",
  "s3_aws_secret_access_key",
  "s3_endpoint_url",
  "gcs_bucket_name",
  "gcs_path_service_account",
  "gcs_path",
  "supported_call_types",
  "mode",
  "ttl",
  "disable_copilot_system_to_assistant",
];

/**
 * model_list entries' litellm_params and model_info are open in LiteLLM:
 * litellm_params are passed on to the provider call (proxy/configs.md: "all
 * params accepted by litellm.completion()"), and model_info takes any field
 * (proxy/config_settings.md's example: `additionalProp1`). So every key there
 * that is not ours is set aside and named, except one a letter or two from
 * one of ours (`api_bse`), which is refused as the typo it is. These, from
 * the examples of proxy/configs.md and proxy/config_settings.md, are never
 * taken for typos.
 */
export const LITELLM_MODEL_PARAMS: readonly string[] = [
  "rpm",
  "tpm",
  "api_version",
  "aws_region_name",
  "azure_ad_token",
  "seed",
  "max_tokens",
  "temperature",
  "extra_headers",
  "organization",
  "litellm_credential_name",
  "initial_prompt_value",
  "roles",
  "final_prompt_value",
  "bos_token",
  "eos_token",
];

/** model_info: see LITELLM_MODEL_PARAMS. */
export const LITELLM_MODEL_INFO: readonly string[] = [
  "id",
  "mode",
  "max_tokens",
  "base_model",
  "version",
  "supported_environments",
  "access_groups",
  "custom_tokenizer",
];

/**
 * LiteLLM keys refused on purpose (above: why), with what to do instead,
 * added to the "Unrecognized key" message. Keyed by dotted path.
 */
export const LITELLM_REFUSED: Readonly<Record<string, string>> = {
  include: "LiteLLM's include is not read here: put the included files' settings in this file",
  "general_settings.allowed_ips":
    "LiteLLM's IP allow-list is not applied here: restrict access in front of the gateway, and remove it",
  "general_settings.allowed_routes":
    "LiteLLM's route allow-list is not applied here: restrict routes in front of the gateway, and remove it",
  "general_settings.admin_only_routes":
    "LiteLLM's admin-only routes are not applied here: restrict routes in front of the gateway, and remove it",
  "general_settings.custom_auth":
    "LiteLLM's custom auth is not run here: this gateway authenticates with master_key and virtual keys; remove it",
  "general_settings.enforced_params":
    "LiteLLM's required request params are not enforced here; remove it",
  "general_settings.enforce_user_param":
    "LiteLLM's required `user` param is not enforced here; remove it",
  "general_settings.reject_clientside_metadata_tags":
    "LiteLLM's refusal of client-side tags is not applied here; remove it",
  "litellm_settings.cache_params.redis_startup_nodes":
    "LiteLLM's Redis Cluster nodes: write them as cluster_nodes (host:port)",
  "litellm_settings.cache_params.service_name": "Redis Sentinel is not supported",
  "litellm_settings.cache_params.sentinel_nodes": "Redis Sentinel is not supported",
  "litellm_settings.cache_params.gcp_service_account":
    "GCP IAM authentication to Redis is not supported: use password (and username)",
  "litellm_settings.cache_params.gcp_ssl_ca_certs":
    "not supported: with ssl: true, Redis's certificate is checked against Node's CAs (add yours with NODE_EXTRA_CA_CERTS)",
  "litellm_settings.cache_params.ssl_cert_reqs":
    "not supported: with ssl: true, Redis's certificate is always checked",
  "litellm_settings.cache_params.ssl_check_hostname":
    "not supported: with ssl: true, Redis's host name is always checked",
};
