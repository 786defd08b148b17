# The secrets exist here; their values never do. Add them once with:
#   printf %s "$VALUE" | gcloud secrets versions add <secret id> --data-file=-
resource "google_secret_manager_secret" "secret" {
  for_each  = local.secrets
  project   = var.project
  secret_id = each.value
  labels    = { app = "lbtrain", env_var = lower(each.key) }
  replication {
    auto {}
  }
  depends_on = [google_project_service.apis]
}

# Each service may read exactly the secrets it mounts (local.service_secrets), no other.
resource "google_secret_manager_secret_iam_member" "service" {
  for_each  = { for p in flatten([for svc, names in local.service_secrets : [for n in names : { svc = svc, name = n }]]) : "${p.svc} ${p.name}" => p }
  project   = var.project
  secret_id = google_secret_manager_secret.secret[each.value.name].secret_id
  role      = "roles/secretmanager.secretAccessor"
  member    = local.service_members[each.value.svc]
}
