"""The first user's app in miniature: a FastAPI + SQLAlchemy task board
wired to outboxd.

    uvicorn app:app --port 8000        (with outboxd on :8002; see README.md)

What a team has to get right, and where it is done here:

* Every change and its event commit together: the models are tracked
  (outboxd.orm.track) and install_hooks emits their events at commit, in the same
  transaction. A rolled-back change emits nothing.
* The page gets its state and the stream position without a race:
  GET /api/state reads the rows AND outbox.head()/outbox.epoch() in ONE
  REPEATABLE READ transaction (outboxd.fastapi.snapshot); the page connects with since=head&epoch=…, so
  a change committed in between is delivered once, neither lost nor twice.
* Tokens: GET /api/ws-token (outboxd.fastapi.ws_token_route) mints a
  short-lived token for the logged-in user, signed with the key outboxd
  trusts (SECRET_KEY, HS256). With an
  identity provider, outboxd reads its JWKS_URL instead and this endpoint
  returns the provider's access token.
* Who is online: with outboxd's PRESENCE=true, the database knows which
  users have a live session (the view outbox.online_users). GET /api/state
  joins it with the efectivos in the same snapshot, and the page follows
  the `presence` events from there (PRESENCE_ROLES=LEVEL_2,ADMIN): which
  efectivos are available AND online, without a second system.
* Permission changes: the admin action changes a user's role and calls
  outbox.disconnect in the same transaction; the user's pages are cut with
  4003, ask for a new token and see what the new role allows — and the
  tokens they held are refused from then on (outbox.disconnect records a
  revocation: a token issued before it no longer connects).

The LOGIN IS A DEVELOPMENT STAND-IN: POST /api/login takes a user id and no
password, and exists only with APP_ENV=development (the default). Put your
own authentication there. Outside development the app refuses to start
without SECRET_KEY and APP_SESSION_KEY, and its cookie is Secure. Every
endpoint checks the caller's role: operators (LEVEL_1) create and move
tasks, supervisors (LEVEL_2) change efectivos, an assignee may move their
own task, ADMIN does everything.

Needs: the outboxd package (clients/python) and Debian's python3-fastapi,
python3-uvicorn, python3-sqlalchemy, python3-psycopg2 and python3-jwt —
scripts/python-venv.sh makes .venv with all of them (see README.md).
"""
import os
import sys
import time
from types import SimpleNamespace

import jwt
from fastapi import Cookie, Depends, FastAPI, HTTPException, Response
from fastapi.responses import FileResponse, JSONResponse
from pydantic import BaseModel
from sqlalchemy import BigInteger, Boolean, Column, Identity, String, create_engine, func, select, text
from sqlalchemy.orm import Session, declarative_base

from outboxd import disconnect
from outboxd.fastapi import snapshot, ws_token_route
from outboxd.orm import install_hooks, queue_event, track

HERE = os.path.dirname(os.path.abspath(__file__))

DATABASE_URL = os.environ.get("DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres").replace(
    "postgres://", "postgresql://", 1)
# development (the default): the development login, development keys, a
# cookie that also works over http://127.0.0.1. Anything else: none of them.
APP_ENV = os.environ.get("APP_ENV", "development")
DEVELOPMENT = APP_ENV == "development"
# The key outboxd verifies tokens with (its SECRET_KEY); in development
# outboxd's built-in development key when unset, so that `make demo` works.
SECRET_KEY = os.environ.get("SECRET_KEY") or ("outboxd-development-secret-change-me" if DEVELOPMENT else None)
# The app's own key for its session cookie: not outboxd's.
SESSION_KEY = os.environ.get("APP_SESSION_KEY") or ("fastapi-app-session-key-change-me" if DEVELOPMENT else None)
if not SECRET_KEY or not SESSION_KEY:
    sys.exit("APP_ENV=%s: SECRET_KEY (outboxd's) and APP_SESSION_KEY (this app's cookie) are required; "
             "the development keys are public" % APP_ENV)
OUTBOXD_WS_URL = os.environ.get("OUTBOXD_WS_URL", "ws://127.0.0.1:8002/ws/connect")
WS_TOKEN_TTL = int(os.environ.get("WS_TOKEN_TTL", "300"))
STATUSES = ("pending", "in_progress", "blocked", "done")

Base = declarative_base()


class User(Base):
    __tablename__ = "app_users"
    id = Column(String, primary_key=True)
    name = Column(String, nullable=False)
    role = Column(String, nullable=False)


class Task(Base):
    __tablename__ = "app_tasks"
    id = Column(BigInteger, Identity(always=True), primary_key=True)
    title = Column(String, nullable=False)
    status = Column(String, nullable=False, default="pending")
    assignee = Column(String, nullable=False)


class Efectivo(Base):
    __tablename__ = "app_efectivos"
    id = Column(BigInteger, primary_key=True)
    nombre = Column(String, nullable=False)
    disponible = Column(Boolean, nullable=False, default=True)
    user_id = Column(String)  # the efectivo's login, when they have one (presence)


def task_row(t):
    return {"id": t.id, "title": t.title, "status": t.status, "assignee": t.assignee}


def efectivo_row(e):
    return {"id": e.id, "nombre": e.nombre, "disponible": e.disponible, "user_id": e.user_id}


# Events, declared on the models: emitted at commit, in the same transaction.
track(Task, "task_event", on=("insert", "update"), fields=("title", "status", "assignee"),
      roles=["LEVEL_1", "ADMIN"], users=lambda t: [t.assignee],
      payload=lambda t, action, changes: dict(task_row(t), action=action))
track(Efectivo, "efectivo_event", on=("update",), fields=("disponible",),
      roles=["LEVEL_2", "ADMIN"],
      payload=lambda e, action, changes: dict(efectivo_row(e), action="availability_changed"))


class AppSession(Session):
    pass


install_hooks(AppSession)

engine = create_engine(DATABASE_URL, future=True)


def setup_database():
    Base.metadata.create_all(engine)
    with AppSession(engine) as s, s.begin():
        s.execute(text("ALTER TABLE app_efectivos ADD COLUMN IF NOT EXISTS user_id text"))  # boards from before
        if s.scalar(select(func.count()).select_from(User)) == 0:
            s.add_all([User(id="op1", name="Operador 1", role="LEVEL_1"),
                       User(id="op2", name="Operador 2", role="LEVEL_1"),
                       User(id="sup1", name="Supervisora", role="LEVEL_2"),
                       User(id="admin", name="Administración", role="ADMIN"),
                       User(id="ef1", name="Efectivo 1", role="EFECTIVO"),
                       User(id="ef2", name="Efectivo 2", role="EFECTIVO")])
        if s.scalar(select(func.count()).select_from(Efectivo)) == 0:
            s.add_all([Efectivo(id=i, nombre=f"Efectivo {i}", user_id=f"ef{i}" if i <= 2 else None)
                       for i in range(1, 7)])


app = FastAPI(title="task board")


@app.on_event("startup")
def _startup():
    setup_database()


def db():
    with AppSession(engine) as s:
        yield s


def current_user(app_session: str = Cookie(default=None)) -> SimpleNamespace:
    """The logged-in user as the database says NOW (its own short
    transaction: the request's session stays free for the change)."""
    if not app_session:
        raise HTTPException(401, "log in first")
    try:
        claims = jwt.decode(app_session, SESSION_KEY, algorithms=["HS256"])
    except jwt.PyJWTError:
        raise HTTPException(401, "session expired: log in again")
    with AppSession(engine) as s:
        user = s.get(User, claims["sub"])
        if user is None:
            raise HTTPException(401, "unknown user")
        return SimpleNamespace(id=user.id, name=user.name, role=user.role)


def require_role(user, *roles):
    """403 unless the user holds one of roles."""
    if user.role not in roles:
        raise HTTPException(403, "this needs the role " + " or ".join(roles))


class Login(BaseModel):
    user: str


def development_only():
    if not DEVELOPMENT:
        raise HTTPException(404, "the development login is off outside APP_ENV=development: authenticate your users here")


def user_list(s):
    return [{"id": u.id, "name": u.name, "role": u.role} for u in s.scalars(select(User).order_by(User.id))]


@app.get("/api/login/users", dependencies=[Depends(development_only)])
def login_choices(s: Session = Depends(db)):
    """The development login's choices."""
    return user_list(s)


@app.post("/api/login", dependencies=[Depends(development_only)])
def login(body: Login, response: Response, s: Session = Depends(db)):
    """DEVELOPMENT STAND-IN: pick a user, no password. A real app
    authenticates here (and this endpoint does not exist outside
    APP_ENV=development)."""
    user = s.get(User, body.user)
    if user is None:
        raise HTTPException(404, "no such user")
    cookie = jwt.encode({"sub": user.id, "exp": int(time.time()) + 8 * 3600}, SESSION_KEY, algorithm="HS256")
    response.set_cookie("app_session", cookie, httponly=True, samesite="strict", secure=not DEVELOPMENT)
    return {"id": user.id, "name": user.name, "role": user.role}


@app.post("/api/logout")
def logout(response: Response):
    response.delete_cookie("app_session", httponly=True, samesite="strict", secure=not DEVELOPMENT)
    return {"ok": True}


@app.get("/api/users")
def users(user=Depends(current_user), s: Session = Depends(db)):
    """Every user with their role: ADMIN only (it changes roles)."""
    require_role(user, "ADMIN")
    return user_list(s)


@app.get("/api/assignees")
def assignees(user=Depends(current_user), s: Session = Depends(db)):
    """Who a task can be assigned to (ids and names): for the roles that assign."""
    require_role(user, "LEVEL_1", "ADMIN")
    return [{"id": u["id"], "name": u["name"]} for u in user_list(s)]


@app.get("/api/me")
def me(user=Depends(current_user)):
    return {"id": user.id, "name": user.name, "role": user.role}


def ws_identity(user=Depends(current_user)):
    """Who a token for outboxd is for: the logged-in user, with the role the
    database says they have NOW (the page asks again after 4001/4003)."""
    return user.id, [user.role]


# GET /api/ws-token → {"token", "expires_in"}: short-lived, refreshed in band.
ws_token_route(app, secret=SECRET_KEY, identity=ws_identity, ttl=WS_TOKEN_TTL)


@app.get("/api/state")
def state(user=Depends(current_user)):
    """The board and the stream position in ONE snapshot: outboxd's events
    after `since` are exactly the changes this state does not show yet —
    who is online included (outbox.online_users, then `presence` events)."""
    def read(conn):
        tasks = conn.execute(text("SELECT id, title, status, assignee FROM app_tasks ORDER BY id")).mappings().all()
        efectivos = conn.execute(text(
            "SELECT e.id, e.nombre, e.disponible, e.user_id, o.user_id IS NOT NULL AS online "
            "FROM app_efectivos e LEFT JOIN outbox.online_users o ON o.user_id = e.user_id "
            "ORDER BY e.id")).mappings().all()
        return tasks, efectivos

    (tasks, efectivos), since, epoch = snapshot(engine, read)
    visible = [dict(t) for t in tasks if user.role in ("LEVEL_1", "ADMIN") or t["assignee"] == user.id]
    return {"user": {"id": user.id, "name": user.name, "role": user.role},
            "tasks": visible,
            "efectivos": [dict(e) for e in efectivos] if user.role in ("LEVEL_2", "ADMIN") else [],
            "since": since, "epoch": epoch, "ws_url": OUTBOXD_WS_URL}


class NewTask(BaseModel):
    title: str
    assignee: str


@app.post("/api/tasks", status_code=201)
def create_task(body: NewTask, user=Depends(current_user), s: Session = Depends(db)):
    require_role(user, "LEVEL_1", "ADMIN")
    if not body.title.strip():
        raise HTTPException(422, "a task needs a title")
    with s.begin():
        if s.get(User, body.assignee) is None:
            raise HTTPException(422, "no such user: " + body.assignee)
        task = Task(title=body.title, assignee=body.assignee)
        s.add(task)
        s.flush()
        row = task_row(task)
        refresh_dashboard(s)
    return row


class TaskChange(BaseModel):
    title: str | None = None
    status: str | None = None
    assignee: str | None = None


@app.patch("/api/tasks/{task_id}")
def change_task(task_id: int, body: TaskChange, user=Depends(current_user), s: Session = Depends(db)):
    with s.begin():
        task = s.get(Task, task_id)
        if task is None:
            raise HTTPException(404, "no such task")
        # Operators and admins change any task; an assignee moves their own.
        if user.role not in ("LEVEL_1", "ADMIN") and not (
                task.assignee == user.id and body.title is None and body.assignee is None):
            raise HTTPException(403, "this needs the role LEVEL_1 or ADMIN, or to be the task's assignee (status only)")
        if body.title is not None:
            task.title = body.title
        if body.status is not None:
            task.status = body.status
        if body.assignee is not None and body.assignee != task.assignee:
            if s.get(User, body.assignee) is None:
                raise HTTPException(422, "no such user: " + body.assignee)
            # The task_event goes to the new assignee (track); the previous
            # one is told it left their board.
            queue_event(s, "task_event", dict(task_row(task), assignee=body.assignee, action="unassigned"),
                        users=[task.assignee])
            task.assignee = body.assignee
        s.flush()  # the change is written...
        if task.status not in STATUSES:  # ...and refused: the transaction rolls back, no event
            raise HTTPException(422, f"status must be one of {', '.join(STATUSES)}")
        if body.status == "blocked":
            queue_event(s, "system_event", {"level": "warning", "message": f"Tarea {task.id} bloqueada"}, broadcast=True)
        refresh_dashboard(s)
        row = task_row(task)
    return row


class EfectivoChange(BaseModel):
    disponible: bool


@app.patch("/api/efectivos/{efectivo_id}")
def change_efectivo(efectivo_id: int, body: EfectivoChange, user=Depends(current_user),
                    s: Session = Depends(db)):
    require_role(user, "LEVEL_2", "ADMIN")
    with s.begin():
        e = s.get(Efectivo, efectivo_id)
        if e is None:
            raise HTTPException(404, "no such efectivo")
        e.disponible = body.disponible
        row = efectivo_row(e)
    return row


class RoleChange(BaseModel):
    role: str


@app.post("/api/admin/users/{user_id}/role")
def change_role(user_id: str, body: RoleChange, admin=Depends(current_user), s: Session = Depends(db)):
    """Change a user's role and cut their live sessions in the same commit:
    their pages get every event up to this one, are closed with 4003, ask
    for a new token (with the new role) and go on from there."""
    if admin.role != "ADMIN":  # require_role, spelled out: the one place that changes rights
        raise HTTPException(403, "admins only")
    with s.begin():
        user = s.get(User, user_id)
        if user is None:
            raise HTTPException(404, "no such user")
        user.role = body.role
        s.flush()
        disconnect(s, [user.id], f"role changed to {body.role}")
    return {"id": user.id, "role": body.role}


def refresh_dashboard(s):
    """dashboard_event: the aggregate the dashboards show, after the change."""
    s.flush()
    counts = dict(s.execute(select(Task.status, func.count()).group_by(Task.status)).all())
    queue_event(s, "dashboard_event", {status: counts.get(status, 0) for status in STATUSES},
                roles=["LEVEL_1", "LEVEL_2", "ADMIN"])


@app.get("/")
def index():
    return FileResponse(os.path.join(HERE, "static", "index.html"))


@app.get("/outboxd-client.js")
def client_js():
    return FileResponse(os.path.join(HERE, "..", "..", "clients", "js", "src", "index.js"), media_type="text/javascript")


@app.exception_handler(HTTPException)
def http_error(request, exc):
    return JSONResponse({"error": exc.detail}, status_code=exc.status_code)
