# Topics and push subscriptions: the same topology lbtrain.adapters.pubsub_bus.ensure_topology
# creates for the local stack (local.push_routes), with OIDC push auth and a dead-letter policy.
# Every push is signed as the invoker with the target's audience: the services' PUSH_SERVICE_ACCOUNT
# and PUSH_AUDIENCE (run.tf), checked by Cloud Run IAM and/or the app (PUSH_AUTH).
resource "google_pubsub_topic" "topic" {
  #checkov:skip=CKV_GCP_83:Google-managed encryption suffices: messages carry run/step ids and job states, never labels, data or secrets; a KMS key would add a key to run and rotate for nothing that needs it
  for_each   = local.push_routes
  project    = var.project
  name       = "${var.deployment_name}-${each.key}"
  labels     = { app = "lbtrain", deployment = var.deployment_name }
  depends_on = [google_project_service.apis]
}

resource "google_pubsub_subscription" "push" {
  for_each             = local.push_routes
  project              = var.project
  name                 = "${var.deployment_name}-${each.key}-push"
  topic                = google_pubsub_topic.topic[each.key].id
  ack_deadline_seconds = local.ack_deadline_seconds
  labels               = { app = "lbtrain", deployment = var.deployment_name }

  push_config {
    push_endpoint = "${local.service_uris[each.value.service]}${each.value.path}"
    oidc_token {
      service_account_email = google_service_account.invoker.email
      audience              = "${local.audience_prefix}/${each.value.service}"
    }
  }

  retry_policy {
    minimum_backoff = local.minimum_backoff
    maximum_backoff = local.maximum_backoff
  }

  dynamic "dead_letter_policy" {
    for_each = each.value.dead_letter ? [google_pubsub_topic.topic["dead-letter"].id] : []
    content {
      dead_letter_topic     = dead_letter_policy.value
      max_delivery_attempts = var.max_delivery_attempts
    }
  }

  expiration_policy {
    ttl = "" # never expire for inactivity
  }

  depends_on = [google_service_account_iam_member.pubsub_mints_invoker_tokens]
}

# Dead-lettering: Pub/Sub's service agent forwards from each subscription to the dead-letter topic.
resource "google_pubsub_topic_iam_member" "dead_letter_publisher" {
  project = var.project
  topic   = google_pubsub_topic.topic["dead-letter"].name
  role    = "roles/pubsub.publisher"
  member  = local.pubsub_service_agent
}

resource "google_pubsub_subscription_iam_member" "dead_letter_subscriber" {
  for_each     = { for k, v in local.push_routes : k => v if v.dead_letter }
  project      = var.project
  subscription = google_pubsub_subscription.push[each.key].name
  role         = "roles/pubsub.subscriber"
  member       = local.pubsub_service_agent
}
